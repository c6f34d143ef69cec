"""Building a signed .swu bundle on a build host from a sw-description template: signing, the
template's text edits, staging (compress → encrypt → hash), the build and its command line.
Imports otad.swu (cpio writer, AES key file) and the shared leaves only; never install/, boot/, hawkbit/."""
