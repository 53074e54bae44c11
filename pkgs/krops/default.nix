# krops's writers for krops-rs: `writeDeploy`, `writeTest` and `writeCommand`
# take krops's arguments and write small scripts that run krops-deploy,
# krops-test and krops-command with the sources in a JSON file and the target
# as JSON. Arguments the script is run with are passed on to the tool
# (`./result --dry-run` shows the plan).
let
  lib = import ../../lib;
  w = import ../../lib/writers.nix { inherit lib; };
in

# Called with callPackage from plain nixpkgs, as krops's pkgs/krops is
# (`pkgs.callPackage "${krops}/pkgs/krops" { inherit populate; }`), it builds
# the tools itself, and takes krops's own arguments (`populate`, `nix`,
# `openssh`) without needing them: the tools populate and reach targets.
{ writers
, callPackage ? null
, krops-rs ? w.kropsRs "pkgs/krops" callPackage
, populate ? null
, nix ? null
, openssh ? null
}:

let
  inherit (w) flag option optionUnless checkBool checkString checkTags targetJSON flakeOptions;
  writeTool = w.writeTool { inherit krops-rs writers; };

  # krops-deploy --nom's modes (clap's values of its `Nom`); tests/contract.rs
  # checks that this list says the same.
  nomModes = [ "opportunistic" "optimistic" "pessimistic" "true" "false" ];
in
{
  writeDeploy = name: {
    backup ? false,
    buildTarget ? null,
    confirmTimeout ? null,
    crossDeploy ? false,
    fast ? null,
    flake ? null,
    flakeInputs ? { },
    force ? false,
    keys ? null,
    operation ? "switch",
    reboot ? false,
    rebootTimeout ? null,
    source,
    tags ? [ ],
    target,
    useNixOutputMonitor ? "opportunistic"
  }:
    let
      what = "writeDeploy ${name}";
      nom =
        if lib.isBool useNixOutputMonitor then lib.toJSON useNixOutputMonitor
        else if lib.elem useNixOutputMonitor nomModes then useNixOutputMonitor
        else throw "${what}: useNixOutputMonitor: ${lib.toJSON useNixOutputMonitor} is not one of ${lib.concatStringsSep ", " nomModes}";
      # Seconds within which a new ssh connection must confirm a switch or
      # test, else the target rolls it back; null: no confirmation (krops).
      confirmTimeout' =
        if confirmTimeout == null then null
        else if lib.isInt confirmTimeout && confirmTimeout >= 1 then toString confirmTimeout
        else throw "${what}: confirmTimeout: expected a whole number of seconds (at least 1), got ${lib.toJSON confirmTimeout}";
      # Seconds a rebooted target has to come back (--reboot-timeout).
      rebootTimeout' =
        if rebootTimeout == null then null
        else if lib.isInt rebootTimeout && rebootTimeout >= 1 then toString rebootTimeout
        else throw "${what}: rebootTimeout: expected a whole number of seconds (at least 1), got ${lib.toJSON rebootTimeout}";
      deprecated =
        if fast != null
        then lib.trace "${what}: it's now always fast, setting the `fast` attribute is deprecated and will be removed in future"
        else (x: x);
    in
    deprecated (builtins.seq (checkTags what tags) writeTool name "krops-deploy" source (
      option "--target" (targetJSON what "target" target)
      ++ option "--build-target" (if buildTarget == null then null else targetJSON what "buildTarget" buildTarget)
      ++ option "--operation" (checkString what "operation" operation)
      ++ flag "--cross-deploy" (checkBool what "crossDeploy" crossDeploy)
      ++ option "--nom" nom
      ++ flag "--force" (checkBool what "force" force)
      ++ flag "--backup" (checkBool what "backup" backup)
      ++ optionUnless "--preview" "--confirm-timeout" confirmTimeout'
      # A preview activates nothing to reboot into, as a fleet leaves it out.
      ++ (if checkBool what "reboot" reboot then [ { unless = "--preview"; words = [ "--reboot" ]; } ] else [ ])
      ++ optionUnless "--preview" "--reboot-timeout" rebootTimeout'
      ++ flakeOptions what flake flakeInputs
      ++ option "--keys" (w.keysFile what keys)
    ));

  writeTest = name: {
    backup ? false,
    flake ? null,
    flakeInputs ? { },
    force ? false,
    source,
    target,
    trace ? false
  }:
    let
      what = "writeTest ${name}";
      target' = lib.mkTarget target;
    in
    if !lib.isLocalTarget target' then
      throw "${what}: target ${lib.toJSON target'} is not this machine (writeTest builds here)"
    else
      writeTool name "krops-test" source (
        option "--target" (targetJSON what "target" target)
        ++ flag "--trace" (checkBool what "trace" trace)
        ++ flag "--force" (checkBool what "force" force)
        ++ flag "--backup" (checkBool what "backup" backup)
        ++ flakeOptions what flake flakeInputs
      );

  writeCommand = name: {
    allocateTTY ? false,
    backup ? false,
    command ? null,
    force ? false,
    keys ? null,
    source,
    tags ? [ ],
    target
  }:
    let
      what = "writeCommand ${name}";
      target' = lib.mkTarget target;
      # krops's `command` is a function of the target path giving a script;
      # without one, krops-command prints the target path.
      script =
        if command == null then [ ]
        else if lib.isFunction command then option "--" (checkString what "command" (command target'.path))
        else if lib.isString command then option "--" command
        else throw "${what}: command: expected a function of the target path giving a script, got ${lib.typeOf command}";
    in
    builtins.seq (checkTags what tags) writeTool name "krops-command" source (
      option "--target" (targetJSON what "target" target)
      ++ flag "--allocate-tty" (checkBool what "allocateTTY" allocateTTY)
      ++ flag "--force" (checkBool what "force" force)
      ++ flag "--backup" (checkBool what "backup" backup)
      ++ option "--keys" (w.keysFile what keys)
      ++ script
    );
}
