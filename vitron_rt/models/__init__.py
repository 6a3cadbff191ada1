"""PyTorch reference components and their checkpoint loaders.

The single source of truth for export and the oracle for parity checks. Importing this
package imports torch; the runtime never does.
"""
