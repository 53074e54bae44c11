# krops's `pkgs.populate` for krops-rs: `populate { source, target, force?,
# backup? }` writes a script that syncs the sources to the target with the
# populate tool.
let
  lib = import ../../lib;
  w = import ../../lib/writers.nix { inherit lib; };
in

# Called with callPackage from plain nixpkgs, as krops's pkgs/populate is,
# it builds the tools itself (see ../krops/default.nix).
{ writers
, callPackage ? null
, krops-rs ? w.kropsRs "pkgs/populate" callPackage
}:

{ backup ? false, force ? false, source, target }:
let
  what = "populate";
in
w.writeTool { inherit krops-rs writers; } (w.storeName "populate.${(lib.mkTarget target).host}") "populate" source (
  w.option "--target" (w.targetJSON what "target" target)
  ++ w.flag "--force" (w.checkBool what "force" force)
  ++ w.flag "--backup" (w.checkBool what "backup" backup)
)
