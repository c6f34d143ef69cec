"""SWUpdate bundles read as bytes in, frozen data out: the cpio stream, sw-description (parsed,
selected, typed), its signature, AES and versions. It knows no targets, slots or servers: it must
not import otad's other packages or modules, only otad.errors and otad.libconfig (and RELEASE_DATE)."""
