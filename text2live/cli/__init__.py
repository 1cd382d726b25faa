"""Command-line entry points: ``t2l-train``, ``t2l-render``, ``t2l-eval``, ``t2l-table``.

The modules here are thin: they parse arguments and turn errors into one line. Nothing outside this
package imports from it.
"""
