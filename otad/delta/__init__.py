"""Delta updates: fetch only the chunks of an image the device does not already hold.

Owns the zchunk format, chunking a source, matching chunks, decoding chunk data and fetching
byte ranges. Leaf modules only: imports nothing of otad but otad.errors and small leaves
(durable, hawkbit.policy); bundles, slots and the install pipeline wire it in.
"""
