"""Sample firmware images, the bundle build tool, and the sample bundles shipped in ``dist/``."""
