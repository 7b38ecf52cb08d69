"""Reference models: their architectures, training and the packages shipped in ``dist/``."""
