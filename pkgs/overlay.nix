# Adds krops-rs (the tools), krops (the writers) and populate to nixpkgs.
self: super: {
  krops-rs = self.callPackage ./krops-rs { };
  krops = self.callPackage ./krops { };
  populate = self.callPackage ./populate { };
}
