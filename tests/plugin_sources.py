"""Plugin sources the plugin tests install as real distributions."""

TINY = """
    from rbpbench import MethodSpec, hookimpl
    from rbpbench.methods.implicit import neumann_rbp


    def half_neumann(problem, truncation, *, diagnostics=True, **params):
        return neumann_rbp(problem, max(1, truncation // 2), diagnostics=diagnostics)


    @hookimpl
    def rbpbench_methods():
        return [MethodSpec("tiny-neumann", half_neumann, "Neumann-RBP with K/2 products")]
"""

BROKEN = """
    raise ImportError("this plugin is broken on purpose")
"""

DUPLICATE = """
    from rbpbench import MethodSpec, hookimpl
    from rbpbench.methods.unrolled import bptt


    @hookimpl
    def rbpbench_methods():
        return [MethodSpec("neumann-rbp", bptt, "an impostor")]
"""
