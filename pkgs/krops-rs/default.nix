# The krops-rs tools (mktarget, populate, krops-deploy, krops-test,
# krops-command), built from this workspace. Each finds openssh, rsync, git
# and gnupg on its PATH; a program the user's PATH provides comes first, so
# users can still substitute their own (pass, passage and nix come from the
# user's PATH alone).
{ lib
, rustPlatform
, makeWrapper
, installShellFiles
, git
, gnupg
, openssh
, rsync
}:

let
  root = ../..;
  workspace = lib.importTOML (root + "/Cargo.toml");
  tools = [ "mktarget" "populate" "krops-deploy" "krops-test" "krops-command" ];
  # Man pages (man/TOOL.1) and shell completions (completions/TOOL.bash,
  # .fish, .zsh), once the workspace has them.
  hasMan = builtins.pathExists (root + "/man");
  hasCompletions = builtins.pathExists (root + "/completions");
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

  nativeBuildInputs = [ makeWrapper installShellFiles ];
  nativeCheckInputs = [ git ];

  cargoBuildFlags = map (tool: "--bin=${tool}") tools;
  # The unit tests; the end-to-end suites in tests/ need sshd, sudo and a
  # writable Nix store.
  cargoTestFlags = [ "--workspace" "--exclude" "krops-tests" ];

  postInstall = ''
    for tool in ${lib.escapeShellArgs tools}; do
      wrapProgram "$out/bin/$tool" \
        --suffix PATH : ${lib.escapeShellArg (lib.makeBinPath [ openssh rsync git gnupg ])}
    done
  '' + lib.optionalString hasMan ''
    installManPage man/*
  '' + lib.optionalString hasCompletions ''
    installShellCompletion completions/*
  '';

  meta = {
    description = "Deploy NixOS machines with krops, as small Unix tools";
    homepage = workspace.workspace.package.repository;
    license = lib.licenses.mit;
    mainProgram = "krops-deploy";
    platforms = lib.platforms.unix;
  };
}
