"""The quantization methods a recipe can name, and everything quantmill knows about them.

Each entry maps a recipe ``method:`` name to the module attribute holding its
:class:`~quantmill.methods.spec.MethodSpec` (the contract: parameters, backend
packages, GPU use, pip extra, output format, card notes). Modules load only when
a recipe names them. A new method is one new file plus one line here; a
third-party package adds one through the ``quantmill.methods`` entry-point group,
with no edit to quantmill. Per-method and per-format knowledge lives only in this
package: the rest of quantmill asks the spec and its
:class:`~quantmill.methods.formats.OutputFormat`.
"""

from __future__ import annotations

BUILTIN_METHODS: dict[str, str] = {
    "gptq": "quantmill.methods.gptq:SPEC",
    "awq": "quantmill.methods.awq:SPEC",
    "rtn": "quantmill.methods.rtn:SPEC",
    "int8": "quantmill.methods.int8:SPEC",
    "fp8": "quantmill.methods.fp8:SPEC",
    "bnb": "quantmill.methods.bnb:SPEC",
    "torchao": "quantmill.methods.torchao:SPEC",
    "hqq": "quantmill.methods.hqq:SPEC",
    "gguf": "quantmill.methods.gguf:SPEC",
    "qat": "quantmill.methods.qat:SPEC",
}
