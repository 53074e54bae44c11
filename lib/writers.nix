# What the writers of pkgs/krops and pkgs/populate share: krops's arguments
# turned into the tools' command lines, and the script that runs a tool.
{ lib }:
let
  inherit (lib)
    attrNames concatMap concatStringsSep getContext isBool isList isString
    listToAttrs map split storeDir toFile toJSON typeOf unsafeDiscardStringContext;

  unique = xs: attrNames (listToAttrs (map (name: { inherit name; value = null; }) xs));
in
rec {
  # The tools' arguments, as lists of lines of words.
  flag = name: on: if on then [ [ name ] ] else [ ];
  option = name: value: if value == null then [ ] else [ [ name value ] ];

  checkBool = what: name: value:
    if isBool value then value
    else throw "${what}: ${name}: expected a boolean, got ${typeOf value}";
  checkString = what: name: value:
    if isString value then value
    else throw "${what}: ${name}: expected a string, got ${typeOf value}";

  # A fleet host's `tags` (`krops-deploy --fleet FILE --on @web`): a fleet
  # built in Nix gives writeDeploy's or writeCommand's attributes, tags
  # included, to `builtins.toJSON`. One host's script has no use for them,
  # so they are only checked here, as the fleet file checks them.
  checkTags = what: tags:
    let
      bad = lib.filter (tag: !(isString tag) || builtins.match "[A-Za-z0-9._][A-Za-z0-9._-]*" tag == null) tags;
    in
    if !(isList tags) then throw "${what}: tags: expected a list of tags (strings), got ${typeOf tags}"
    else if bad != [ ] then throw "${what}: tags: ${toJSON (lib.head bad)}: a tag must be 1 to 255 of the characters A-Z a-z 0-9 . _ - and not start with '-'"
    else tags;

  # Flake mode (README: Flakes): `flake` (a string, `NAME[/DIR][#ATTR]`) and
  # `flakeInputs` (input name → source name) as `--flake` and one
  # `--flake-input INPUT=SOURCE` each; the tool checks them against the
  # sources.
  flakeOptions = what: flake: flakeInputs:
    if flake == null && flakeInputs != { } then
      throw "${what}: flakeInputs: needs flake (the source holding flake.nix)"
    else if !lib.isAttrs flakeInputs then
      throw "${what}: flakeInputs: expected an attribute set of input name → source name, got ${typeOf flakeInputs}"
    else
      option "--flake" (if flake == null then null else checkString what "flake" flake)
      ++ concatMap
        (input: option "--flake-input" "${input}=${checkString what "flakeInputs.${input}" flakeInputs.${input}}")
        (attrNames flakeInputs);

  # The target as JSON, its defaults filled in here as krops's `mkTarget`
  # fills them when the script is built. A field the tools do not know (a
  # typo such as `sudo` spelt `sduo`) is an evaluation error here, rather
  # than an error when the script runs.
  targetFields = [ "user" "host" "port" "path" "sudo" "extraOptions" ];
  targetJSON = what: name: target:
    let
      target' = lib.mkTarget target;
      unknown = lib.filter (field: !(lib.elem field targetFields)) (attrNames target');
    in
    if unknown != [ ] then
      throw "${what}: ${name}.${lib.head unknown}: unknown field (expected ${concatStringsSep ", " targetFields})"
    else toJSON target';

  # `--sources FILE` with the evaluated sources as JSON in the store, and a
  # line for the script naming the store paths they refer to. `toFile`
  # cannot hold references to derivation outputs (a file source made with
  # `pkgs.writeText`, say), so the JSON file goes without, and the script
  # carries them: nix builds them with the script and keeps them as long.
  sources = source:
    let
      json = toJSON (lib.evalSource source);
      text = unsafeDiscardStringContext json;
      context = getContext json;
      storePaths = unique (concatMap (x: if isList x then x else [ ])
        (split "(${storeDir}/[0-9a-z]{32}-[-+._?=0-9A-Za-z]+)" text));
      refs = lib.appendContext (concatStringsSep " " storePaths) context;
    in
    {
      args = option "--sources" (toFile "krops-sources.json" text);
      refs = if context == { } then "" else "# the sources refer to: ${refs}\n";
    };

  # `--keys FILE`: the keys object (README: Keys) as JSON in the store. It
  # holds where each key's content comes from, never a key: a `keyFile`
  # that is a Nix path (`./secret`) or has store context would copy the key
  # into the world-readable Nix store, so it is refused; it is a string of
  # the file's path here. A `keyCommand`'s program must exist when the
  # script runs.
  keysFile = what: keys:
    let
      check = name: key:
        if !lib.isAttrs key then
          throw "${what}: keys.${name}: expected an attribute set, got ${typeOf key}"
        else if key ? keyFile && !(isString key.keyFile && !builtins.hasContext key.keyFile) then
          throw "${what}: keys.${name}.keyFile: give the path as a string (\"/home/me/keys/db\"), not a Nix path: that would copy the key into the Nix store, which every user can read"
        else key;
    in
    if keys == null then null
    else if !lib.isAttrs keys then
      throw "${what}: keys: expected an attribute set of key name → key, got ${typeOf keys}"
    else toFile "krops-keys.json" (unsafeDiscardStringContext (toJSON (builtins.mapAttrs check keys)));

  # A store path name made of `name`: characters a store path name cannot
  # hold (the colons of an IPv6 address, say) become '-'.
  storeName = name:
    concatStringsSep "-" (lib.filter isString (split "[^-+._?=0-9A-Za-z]+" name));

  # The tools, for a writer called without them: built with `callPackage`.
  # Plain nixpkgs has no krops-rs, and krops's users call the writers as
  # krops's (`pkgs.callPackage "${krops}/pkgs/krops" { inherit populate; }`).
  kropsRs = what: callPackage:
    if callPackage == null
    then throw "${what}: give it krops-rs (the tools), or call it with callPackage"
    else callPackage ../pkgs/krops-rs { };

  # `option`, left out when the script is run with the flag `unless`
  # (`./result --preview` activates nothing, so writeDeploy's
  # confirmTimeout has nothing to confirm), as a fleet leaves out a host's
  # setting the command line makes moot.
  optionUnless = unless: name: value:
    if value == null then [ ] else [ { inherit unless; words = [ name value ]; } ];

  # A dash script running `TOOL "$@" --sources FILE ARGS…`: arguments the
  # script is run with reach the tool (`./result --dry-run`).
  writeTool = { krops-rs, writers }: name: tool: source: args:
    let
      sources' = sources source;
      # Set (to 1) unless the script's arguments include the flag.
      keep = flag: "keep_unless_" + lib.replaceStrings [ "-" ] [ "_" ] (lib.substring 2 (lib.stringLength flag) flag);
      line = words:
        if lib.isAttrs words
        then concatStringsSep " " (map (word: "\${${keep words.unless}:+${lib.quote word}}") words.words)
        else concatStringsSep " " (map lib.quote words);
      lines = map line (sources'.args ++ args);
      flags = unique (map (words: words.unless) (lib.filter lib.isAttrs args));
      checks = concatStringsSep "" (map (flag: ''
        ${keep flag}=1
        for arg do if [ "$arg" = ${lib.quote flag} ]; then ${keep flag}=; fi; done
      '') flags);
    in
    writers.writeDash name ''
      set -efu
      ${checks}${sources'.refs}exec ${lib.quote "${krops-rs}/bin/${tool}"} "$@" \
        ${concatStringsSep " \\\n  " lines}
    '';
}
