"""Data files shipped with amst (see README.md here): the real FIB-SEM crop of ``amst demo``."""
