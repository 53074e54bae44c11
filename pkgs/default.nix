# nixpkgs with krops-rs's overlay (`krops-rs`, `krops`, `populate`), as
# krops's `import "${krops}/pkgs" {}`. Takes nixpkgs's arguments.
{ overlays ? [ ], ... }@args:

import <nixpkgs> (args // {
  overlays = [ (import ./overlay.nix) ] ++ overlays;
})
