# krops's Nix library for krops-rs: what a krops.nix calls as `lib`
# (`lib.evalSource`, `lib.mkTarget`, …), in Nix builtins alone, so that
# `import "${krops}/lib"` works without <nixpkgs>. When <nixpkgs> is on
# NIX_PATH, `lib` also carries nixpkgs's lib (as krops's does), so user code
# calling `lib.mkIf` or `lib.optionalAttrs` through it keeps working.
let
  inherit (builtins)
    all any attrNames concatLists concatMap concatStringsSep elem elemAt filter
    foldl' genList getEnv head isAttrs isBool isFunction isList isPath
    isString length listToAttrs map mapAttrs match pathExists readFile
    replaceStrings sort split stringLength substring tail toJSON trace typeOf;

  nixpkgs = builtins.tryEval <nixpkgs/lib>;
  nixpkgsLib = if nixpkgs.success then import nixpkgs.value else { };

  toList = x: if isList x then x else [ x ];
  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
  # What stands for a path as `toString` reads it: a package, the result of
  # `builtins.fetchGit` or `fetchTarball`, a flake input (`inputs.nixpkgs`),
  # anything with an outPath or a __toString; told apart from a source's
  # attribute set by that attribute, as nixpkgs's `isStringLike` does.
  isPathLike = x: isAttrs x && (x ? outPath || x ? __toString);
  describe = x:
    if isString x then "the string ${toJSON x}"
    else if isPathLike x then "a package or store path"
    else if isAttrs x then "an attribute set"
    else if isFunction x then "a function (modules written as functions are not supported)"
    else if isList x then "a list"
    else if isBool x then "a boolean"
    else typeOf x;

  ##
  ## Targets
  ##

  # `maybeEnv NAME DEFAULT`: the variable's value, DEFAULT when unset or empty.
  maybeEnv = name: default:
    let value = getEnv name; in if value == "" then default else value;

  # The single RFC 1123 label line of /etc/hostname, else `default`.
  maybeHostName = default:
    let
      path = "/etc/hostname";
      lines = filter isString (split "\n" (readFile path));
      names = filter (testString "[0-9A-Za-z]([0-9A-Za-z-]*[0-9A-Za-z])?") lines;
    in
    if !pathExists path then default
    else if length names == 1 then head names
    else trace "malformed ${path}" default;

  # `[[USER]@]HOST[:PORT][/PATH]`, matched as a whole as krops does; an IPv6
  # literal host is written in brackets (`root@[::1]:22/var/src`).
  targetRegex = "(([^@]*)@)?(([^:/]+))?(:([^/]+))?(/.*)?";
  bracketedTargetRegex = "(([^@]*)@)?[[]([0-9A-Za-z:.%_-]+)[]](:([^/]+))?(/.*)?";

  # A target: the defaults, overridden by the parts of a target string that
  # are present, or by the attributes of an attribute set (`defaults // s`).
  mkTarget = s:
    let
      defaults = {
        user = maybeEnv "LOGNAME" null;
        host = maybeEnv "HOSTNAME" (maybeHostName "localhost");
        port = null;
        path = "/var/src";
        sudo = false;
        extraOptions = [ ];
      };
      bracketed = match bracketedTargetRegex s;
      plain = match targetRegex s;
      parts =
        if bracketed != null then {
          user = elemAt bracketed 1;
          host = elemAt bracketed 2;
          port = elemAt bracketed 4;
          path = elemAt bracketed 5;
        } else if plain != null then {
          user = elemAt plain 1;
          host = elemAt plain 3;
          port = elemAt plain 5;
          path = elemAt plain 6;
        } else throw "mkTarget: target ${toJSON s} does not match [[USER]@]HOST[:PORT][/PATH]";
      present = listToAttrs (map (name: { inherit name; value = parts.${name}; })
        (filter (name: parts.${name} != null) (attrNames parts)));
    in
    if isString s then defaults // present
    else if isAttrs s then defaults // s
    else throw "mkTarget: expected a target string or an attribute set, got ${describe s}";

  # Local targets are reached without ssh: this machine's user, and this
  # machine's host name or localhost.
  isLocalTarget = target:
    let origin = mkTarget ""; in
    target.user == origin.user && elem target.host [ origin.host "localhost" ];

  # ssh's `-l USER` (only for a non-empty user: an empty one lets ssh's
  # config decide) and `-p PORT`.
  mkUserPortSSHOpts = target:
    (if target.user != null && target.user != "" then [ "-l" target.user ] else [ ])
    ++ (if target.port != null then [ "-p" (toString target.port) ] else [ ]);

  ##
  ## Shell
  ##

  # `x` as exactly one POSIX shell word: left as it is when no shell treats
  # any of its characters specially, else in single quotes.
  quote = x:
    if match "[A-Za-z0-9%+,./:=@_-]+" x != null then x
    else "'" + replaceStrings [ "'" ] [ "'\\''" ] x + "'";

  firstWord = s: head (match "^([^[:space:]]*).*" s);

  testString = re: x: match re x != null;
  test = re: x: isString x && testString re x;

  ##
  ## Sources
  ##

  # The definitions a value stands for, as nixpkgs's module system reads it:
  # mkIf, mkMerge, mkOverride (mkDefault, mkForce) and mkOrder (mkBefore,
  # mkAfter) resolved; null counts as no definition.
  definitions = where: value:
    let
      go = prio: order: v:
        if isAttrs v && v ? _type && !isPathLike v then
          if v._type == "if" then
            (if isBool v.condition then (if v.condition then go prio order v.content else [ ])
             else throw "evalSource: ${where}: the condition of mkIf is ${describe v.condition}, not a boolean")
          else if v._type == "merge" then concatMap (go prio order) v.contents
          else if v._type == "override" then go v.priority order v.content
          else if v._type == "order" then go prio v.priority v.content
          else throw "evalSource: ${where}: a value of type ${toJSON v._type} cannot be used here"
        else if v == null then [ ]
        else [{ inherit prio order; value = v; }];
    in
    go 100 1000 value;

  # Of several definitions, those of the highest priority (mkForce beats a
  # plain definition beats mkDefault).
  highest = defs:
    let top = foldl' (p: d: if d.prio < p then d.prio else p) (head defs).prio defs; in
    if defs == [ ] then [ ] else filter (d: d.prio == top) defs;

  # The definitions of `key` in every definition of an attribute set.
  fieldDefs = where: defs: key:
    highest (concatMap (d: if d.value ? ${key} then definitions "${where}.${key}" d.value.${key} else [ ]) defs);

  # Field kinds: each checks and merges the definitions of one field.
  kinds = rec {
    # One value, the same wherever it is defined.
    single = what: check: convert: where: defs:
      let
        values = map (d:
          let v = d.value; in
          if check v then convert v
          else throw "evalSource: ${where}: expected ${what}, got ${describe v}") defs;
        first = head values;
      in
      if all (v: v == first) values then first
      else throw "evalSource: ${where}: defined differently in two places (${toJSON first} and ${toJSON (head (filter (v: v != first) values))})";

    str = single "a string" isString (x: x);
    bool = single "a boolean" isBool (x: x);
    # A path may be given as a string, a Nix path (`./config`, not copied to
    # the store) or a package or anything else with an outPath (a fetched tree,
    # a flake input), like krops's `toString ./config`.
    absolute = where: defs:
      let
        path = single "an absolute path" (x: isString x || isPath x || isPathLike x) toString where defs;
      in
      if hasPrefix "/" path then path
      else throw "evalSource: ${where}: ${toJSON path} is not an absolute path";

    # Lists are concatenated, ordered by mkBefore/mkAfter.
    listOf = elemKind: where: defs:
      let
        sorted = sort (a: b: a.order < b.order) defs;
        lists = map (d: if isList d.value then d.value
          else throw "evalSource: ${where}: expected a list, got ${describe d.value}") sorted;
        items = concatLists lists;
      in
      genList (i: elemKind "${where}[${toString i}]" [{ prio = 100; order = 1000; value = elemAt items i; }])
        (length items);

    strs = listOf str;

    # Like `str`, and a Nix path stands for its name (`~/.passage/identities`).
    pathlike = single "a path" (x: isString x || isPath x || isPathLike x) toString;

    enum = values: where: defs:
      let v = str where defs; in
      if elem v values then v
      else throw "evalSource: ${where}: ${toJSON v} is not one of ${concatStringsSep ", " values}";

    # An attribute set of known fields: unknown ones are refused, absent ones
    # get their default or are reported missing.
    record = fields: where: defs:
      let
        sets = concatMap (d:
          if isAttrs d.value && !isPathLike d.value then definitions where d.value
          else throw "evalSource: ${where}: expected an attribute set, got ${describe d.value}") defs;
        names = attrNames fields;
        unknown = filter (key: !(elem key names)) (concatMap (d: attrNames d.value) sets);
        value = name:
          let
            field = fields.${name};
            defs' = fieldDefs where sets name;
          in
          if defs' != [ ] then field.kind "${where}.${name}" defs'
          else if field ? default then field.default
          else throw "evalSource: ${where}.${name}: missing field";
        result = listToAttrs (map (name: { inherit name; value = value name; }) names);
      in
      if unknown != [ ] then
        throw "evalSource: ${where}.${head unknown}: unknown field (expected ${concatStringsSep ", " names})"
      else result;
  };

  # krops's source types: the fields of each, and how its short form (a
  # string instead of an attribute set) reads.
  sourceTypes = with kinds; {
    derivation = {
      takes = "a string (the Nix expression) or an attribute set";
      short = x: if isString x then { text = x; } else x;
      kind = record { text.kind = str; };
    };
    file = {
      takes = "an absolute path or an attribute set";
      short = x: if isString x || isPath x || isPathLike x then { path = x; } else x;
      kind = where: defs:
        let
          file = record {
            path.kind = absolute;
            useChecksum = { kind = bool; default = null; };
            exclude = { kind = strs; default = [ ]; };
            filters = {
              kind = listOf (record {
                type = { kind = enum [ "include" "exclude" ]; default = "exclude"; };
                pattern.kind = str;
              });
              default = [ ];
            };
            deleteExcluded = { kind = bool; default = true; };
          } where defs;
          # Store paths have mangled timestamps: compare contents instead.
          useChecksum = if file.useChecksum != null then file.useChecksum else hasPrefix "/nix/store/" file.path;
          warn = if file.exclude != [ ] then trace "warning: ${where}.exclude is deprecated, use ${where}.filters" else (x: x);
        in
        warn (file // { inherit useChecksum; });
    };
    git = {
      takes = "an attribute set";
      short = x: x;
      kind = record {
        url.kind = str;
        ref.kind = str;
        shallow = { kind = bool; default = false; };
        fetchAlways = { kind = bool; default = false; };
        clean = {
          kind = record { exclude = { kind = strs; default = [ ]; }; };
          default = { exclude = [ ]; };
        };
      };
    };
    pass = {
      takes = "an attribute set";
      short = x: x;
      kind = record { dir.kind = absolute; name.kind = str; };
    };
    passage = {
      takes = "a path or an attribute set";
      short = x: if isString x || isPath x || isPathLike x then { dir = x; } else x;
      kind = record {
        dir.kind = pathlike;
        identities_file = { kind = pathlike; default = "~/.passage/identities"; };
        age = { kind = pathlike; default = "age"; };
      };
    };
    pipe = {
      takes = "an absolute path or an attribute set";
      short = x: if isString x || isPath x || isPathLike x then { command = x; } else x;
      kind = record { command.kind = absolute; };
    };
    symlink = {
      takes = "a string (the link text) or an attribute set";
      short = x: if isString x then { target = x; } else x;
      kind = record { target.kind = str; };
    };
  };

  typeNames = attrNames sourceTypes;

  # A source name is one path component below the target path, refused as
  # populate refuses it (populate/src/source/mod.rs, `check_name`; the
  # contract test tests/contract.rs feeds both the same names). Names
  # starting with .populate are populate's own (the sentinel, its backup,
  # the lock, a pipe's temp file).
  checkName = name:
    let where = "evalSource: sources.${toJSON name}"; in
    if !(testString "[A-Za-z0-9._-]+" name) || elem name [ "." ".." ] || hasPrefix "-" name then
      throw "${where}: a source name must be one path component of the characters A-Z a-z 0-9 . _ - (not \".\", \"..\", nor starting with '-')"
    else if stringLength name > 255 then
      throw "${where}: a source name is a file name on the target, and those are at most 255 bytes long; this one has ${toString (stringLength name)}"
    else if hasPrefix ".populate" name then
      throw "${where}: names starting with .populate are populate's own on the target (the sentinel PATH/.populate and what it keeps there): choose another name"
    else name;

  # One source, from all its definitions: `{ type = T; T = { …every field… }; }`.
  evalOne = name: defs:
    let
      sets = concatMap (d:
        if isAttrs d.value && !isPathLike d.value then definitions name d.value
        else throw "evalSource: ${name}: expected an attribute set naming one source type, got ${describe d.value}") defs;
      keys = concatMap (d: attrNames d.value) sets;
      unknown = filter (key: !(elem key ([ "type" ] ++ typeNames))) keys;
      given = filter (t: fieldDefs name sets t != [ ]) typeNames;
      declared = fieldDefs name sets "type";
      type =
        if unknown != [ ] then
          throw "evalSource: ${name}.${head unknown}: unknown field (expected one of type, ${concatStringsSep ", " typeNames})"
        else if given == [ ] then
          throw "evalSource: ${name}: no source type given (expected one of ${concatStringsSep ", " typeNames})"
        else if length given > 1 then
          throw "evalSource: ${name}: several source types given (${concatStringsSep ", " given}); a source has exactly one"
        else head given;
      declaredType = kinds.str "${name}.type" declared;
      spec = sourceTypes.${type};
      where = "${name}.${type}";
      typeDefs = map (d:
        let value = spec.short d.value; in
        if isAttrs value && !isPathLike value then d // { inherit value; }
        else throw "evalSource: ${where}: expected ${spec.takes}, got ${describe d.value}")
        (fieldDefs name sets type);
      value = spec.kind where typeDefs;
    in
    if declared != [ ] && declaredType != type then
      throw "evalSource: ${name}.type: says ${toJSON declaredType} but the source gives ${toJSON type}"
    else { inherit type; ${type} = value; };

  # krops's `evalSource`: one attribute set of sources, or a list of them
  # merged as krops's module system merges them, with every default filled
  # in. `builtins.toJSON` of the result is what `populate` reads.
  evalSource = sources:
    let
      defs = concatMap (definitions "sources") (toList sources);
      sets = map (d:
        if isAttrs d.value && !isPathLike d.value then d
        else throw "evalSource: expected an attribute set of sources (or a list of them), got ${describe d.value}") defs;
      names = attrNames (foldl' (acc: d: acc // d.value) { } sets);
      # A source whose every definition is `mkIf false` is not there; one set
      # to null is a mistake (krops's module system refuses it too).
      defined = map (name: { inherit name; defs = fieldDefs "sources" sets name; }) names;
      nulls = filter (name: any (d: d.value ? ${name} && d.value.${name} == null) sets) names;
    in
    if nulls != [ ] then
      throw "evalSource: ${head nulls}: expected an attribute set naming one source type, got null (to leave a source out, use lib.mkIf or lib.optionalAttrs)"
    else listToAttrs (map (source: {
      name = checkName source.name;
      value = evalOne source.name source.defs;
    }) (filter (source: source.defs != [ ]) defined));

  krops = {
    # The source types evalSource knows, as populate names them.
    sourceTypes = typeNames;
    inherit evalSource firstWord isLocalTarget maybeEnv maybeHostName mkTarget
      mkUserPortSSHOpts quote test testString;
    shell = { inherit quote; };
  };
in
nixpkgsLib // builtins // krops
