"""The quantization methods a recipe can name.

Each entry maps a recipe ``method:`` name to the module attribute holding its
:class:`~quantmill.methods.spec.MethodSpec`. Modules load only when a recipe
names them. A new method is one new file plus one line here; third-party
packages can add methods through the ``quantmill.methods`` entry-point group.
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
