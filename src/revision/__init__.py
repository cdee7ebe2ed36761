"""REVISION: reflective intent mining and online tool planning for e-commerce visual search.

The library is the product; the CLI (`revision.cli`) and the service are thin shells over it.
Stages talk through warehouse tables (`revision.warehouse`) and typed objects.
"""

__version__ = "0.1.0"
