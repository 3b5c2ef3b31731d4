"""Integrations with other libraries: one small module each, named after the
library it serves (``safecache.adapters.hishel``...), importing that library
only when it is imported itself.  Each is installed with the extra of the same
name (``pip install 'safecache[hishel]'``) and documented in docs/adapters/.
"""
