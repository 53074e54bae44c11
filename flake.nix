{
  description = "krops in Rust: deploy NixOS machines with small Unix tools";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "i686-linux" "riscv64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f (import nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
      }));
    in
    {
      overlays.default = import ./pkgs/overlay.nix;

      packages = forAllSystems (pkgs: {
        default = pkgs.krops-rs;
        inherit (pkgs) krops-rs;
      });

      # As krops's flake: the writers, for `krops.lib.${system}.writeDeploy`.
      lib = forAllSystems (pkgs: {
        inherit (pkgs) populate;
        inherit (pkgs.krops) writeCommand writeDeploy writeTest;
      });

      # The build runs the unit tests; the end-to-end suites need sshd.
      checks = forAllSystems (pkgs: {
        inherit (pkgs) krops-rs;
      });
    };
}
