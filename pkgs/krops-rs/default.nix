# The krops-rs tools (mktarget, populate, krops-deploy, krops-test,
# krops-command), built from this workspace, with their man pages and bash,
# zsh and fish completions. Each finds openssh, rsync, git and gnupg on its
# PATH; a program the user's PATH provides comes first, so users can still
# substitute their own (pass, passage and nix come from the user's PATH
# alone).
{ lib
, rustPlatform
, makeWrapper
, git
, gnupg
, openssh
, rsync
}:

let
  root = ../..;
  workspace = lib.importTOML (root + "/Cargo.toml");
  tools = [ "mktarget" "populate" "krops-deploy" "krops-test" "krops-command" ];
in
rustPlatform.buildRustPackage {
  pname = "krops-rs";
  inherit (workspace.workspace.package) version;

  src = lib.cleanSourceWith {
    src = root;
    filter = path: type:
      !(lib.elem (baseNameOf path) [ "target" "result" ".git" "flake.lock" ])
      && !(type == "regular" && lib.hasSuffix ".nix" path);
  };
  cargoLock.lockFile = root + "/Cargo.lock";

  nativeBuildInputs = [ makeWrapper ];
  nativeCheckInputs = [ git ];

  cargoBuildFlags = map (tool: "--bin=${tool}") tools;
  # The unit tests; the end-to-end suites in tests/ need sshd, sudo and a
  # writable Nix store.
  cargoTestFlags = [ "--workspace" "--exclude" "krops-tests" ];

  # The man pages and completions come from the tools' own command lines:
  # the workspace's xtask writes share/man/man1/TOOL.1,
  # share/bash-completion/completions/TOOL, share/zsh/site-functions/_TOOL
  # and share/fish/vendor_completions.d/TOOL.fish below $out. `cargo run`
  # builds it for the build machine, so this works when cross-compiling.
  postInstall = ''
    for tool in ${lib.escapeShellArgs tools}; do
      wrapProgram "$out/bin/$tool" \
        --suffix PATH : ${lib.escapeShellArg (lib.makeBinPath [ openssh rsync git gnupg ])}
    done
    cargo run --frozen --package xtask -- dist "$out"
  '';

  meta = {
    description = "Deploy NixOS machines with krops, as small Unix tools";
    homepage = workspace.workspace.package.repository;
    license = lib.licenses.mit;
    mainProgram = "krops-deploy";
    platforms = lib.platforms.unix;
  };
}
