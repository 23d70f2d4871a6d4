"""The rules: one table of ids, severities and fixes, and the AST analysis that finds them.

The analysis is deliberately conservative: a finding needs one operand that is known to be
an array (a parameter annotated ``mx.array`` / ``torch.Tensor``, the result of an mlx or
torch call, an array attribute set in ``__init__``, ...) and another that is known to be
what the rule is about. Unknown values never produce findings.
"""

from __future__ import annotations

import ast
import struct
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    fix: str


RULES: Dict[str, Rule] = {
    rule.id: rule
    for rule in (
        Rule("MP001", "python-scalar-in-array-arithmetic",
             "give the constant a dtype: mx.array(0.1, dtype=mx.float32) (torch: "
             "torch.tensor(0.1, dtype=torch.float32)), created once outside the call"),
        Rule("MP002", "array-to-python-scalar",
             "keep the value an array (x.astype(mx.float32), mx.sum(x)); read scalars out "
             "only after the computation, outside the model code"),
        Rule("MP003", "numpy-in-compute-path",
             "use the mx.* (or torch.*) op on the array; numpy belongs in references and "
             "I/O, not in model code"),
        Rule("MP004", "fft-of-float64",
             "mx.fft casts float64 to complex64 on every backend (the CPU too): cast "
             "explicitly with x.astype(mx.float32), or use mlx_precise.rfft_conv(u, k, "
             "precision=\"dd\") for accuracy beyond float32"),
        Rule("MP005", "fft-convolution-composed-from-mx-fft",
             "mlx_precise.rfft_conv(u, k, n=n, precision=\"extended\") (rounded once; "
             "bitwise equal on CPU, CUDA and Metal with precision=\"dd\")"),
        Rule("MP006", "unstrict-reduction-op",
             "where parity matters use mlx_precise.layer_norm(x, w, b, eps, "
             "precision=\"extended\") / mlx_precise.addmm(c, a, b, precision=\"extended\") "
             "(mlx_precise.nn.LayerNorm / Linear as layers)"),
        Rule("MP007", "float64-on-gpu-stream",
             "Metal and CUDA arrays cannot be float64: compute float64 on stream=mx.cpu, or "
             "keep float32 data and use mlx_precise ops with precision=\"dd\", which run "
             "on every backend"),
        Rule("MP008", "tf32-float32-matmul",
             "CUDA only: keep float32 matmuls IEEE: torch.backends.cuda.matmul.allow_tf32 "
             "= False and torch.backends.cudnn.allow_tf32 = False "
             "(torch.set_float32_matmul_precision(\"highest\")); MLX: set "
             "MLX_ENABLE_TF32=0 in the environment before importing mlx"),
        Rule("MP101", "pair-eps-differs",
             "use the torch file's eps in the port (mlx_precise.layer_norm(..., eps=...) / "
             "nn.LayerNorm(dims, eps=...))"),
        Rule("MP102", "pair-fft-norm-differs",
             "pass the same norm= to mx.fft as the torch file does (\"backward\", "
             "\"ortho\" or \"forward\"), or mlx_precise.rfft_conv, which has no "
             "normalisation to choose"),
        Rule("MP103", "pair-padding-differs",
             "use the torch file's padding (nn.Conv1d(..., padding=P) / mx.pad widths "
             "and mode)"),
        Rule("MP104", "pair-gelu-variant-differs",
             "exact GELU is mlx.nn.gelu / nn.GELU() (erf); tanh GELU is "
             "mlx.nn.gelu_approx / nn.GELU(approx=\"precise\"): match torch's "
             "approximate=\"none\" / \"tanh\""),
    )
}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    col: int
    rule: str
    severity: str
    message: str
    fix: str
    end_line: int = 0

    def as_dict(self) -> dict:
        return {
            "path": self.path, "line": self.line, "col": self.col, "rule": self.rule,
            "severity": self.severity, "message": self.message, "fix": self.fix,
        }

    def __str__(self) -> str:
        return (f"{self.path}:{self.line}:{self.col}: {self.rule} {self.severity}: "
                f"{self.message}\n    fix: {self.fix}")


def make_finding(path: str, node: ast.AST, rule: str, severity: str, message: str) -> Finding:
    return Finding(path, node.lineno, node.col_offset + 1, rule, severity, message,
                   RULES[rule].fix, getattr(node, "end_lineno", node.lineno) or node.lineno)


# ---------------------------------------------------------------- names and imports

def import_aliases(tree: ast.Module) -> Dict[str, str]:
    """Local name -> fully qualified module or object name, from every import."""
    aliases: Dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def qualified_name(node: ast.AST, aliases: Dict[str, str]) -> Optional[str]:
    """``mx.fft.rfft`` -> ``mlx.core.fft.rfft`` for Name / Attribute chains rooted in an import."""
    parts: List[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id]] + parts[::-1])


def _in_module(name: Optional[str], *prefixes: str) -> bool:
    return name is not None and any(name == p or name.startswith(p + ".") for p in prefixes)


ARRAY_TYPES = ("mlx.core.array", "torch.Tensor")
ARRAY_MODULES = ("mlx.core", "torch", "mlx_precise", "mlx.nn", "torch.nn.functional")
# Calls into the array libraries that return Python values, not arrays.
NON_ARRAY_CALLS = {
    "mlx.core.issubdtype", "mlx.core.default_device", "mlx.core.default_stream",
    "torch.is_tensor", "torch.numel", "torch.is_floating_point", "torch.no_grad",
    "torch.device", "torch.Generator", "torch.manual_seed", "mlx.core.Device",
    "mlx.core.stream", "mlx.core.new_stream", "mlx.core.eval",
}
PREDICATES = {"array_equal", "allclose", "all", "any", "isclose", "equal", "not_equal",
              "greater", "less", "greater_equal", "less_equal", "isnan", "isinf",
              "isfinite", "logical_and", "logical_or", "logical_not", "is_nonzero"}
ARRAY_METHODS_RETURNING_SCALARS = {"item", "tolist", "dim", "numel", "size", "nelement",
                                   "element_size", "is_floating_point", "data_ptr"}
SCALAR_ATTRIBUTES = {"shape", "ndim", "size", "dtype", "itemsize", "nbytes", "device",
                     "is_cuda", "requires_grad"}
ELEMENTWISE_BINARY = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "power",
                      "where", "clip", "sub", "mul", "div", "clamp", "true_divide"}

# Kinds of values the analysis tracks.
ARRAY, ARRAY64, FLOAT, INT, UNKNOWN = "array", "array64", "float", "int", None
MODULE, MODULE_LIST = "module", "module list"


def _is_array(kind) -> bool:
    return kind in (ARRAY, ARRAY64)


def _annotation_kind(annotation: Optional[ast.AST], aliases: Dict[str, str]):
    """Array for ``mx.array``, ``torch.Tensor`` and Optional/Union/Tuple of them (containers
    like Dict/List of arrays are I/O, not compute); float / int for those builtins."""
    if annotation is None:
        return UNKNOWN
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return UNKNOWN
    if isinstance(annotation, ast.Name) and annotation.id in ("float", "int"):
        return FLOAT if annotation.id == "float" else INT
    if isinstance(annotation, ast.Subscript):
        outer = annotation.value
        outer_name = outer.id if isinstance(outer, ast.Name) else getattr(outer, "attr", "")
        if outer_name not in ("Optional", "Union", "Tuple", "tuple"):
            return UNKNOWN
        inner = annotation.slice
        elements = inner.elts if isinstance(inner, ast.Tuple) else [inner]
        kinds = [_annotation_kind(element, aliases) for element in elements]
        return ARRAY if ARRAY in kinds else UNKNOWN
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        kinds = (_annotation_kind(annotation.left, aliases),
                 _annotation_kind(annotation.right, aliases))
        return ARRAY if ARRAY in kinds else UNKNOWN
    name = qualified_name(annotation, aliases)
    return ARRAY if name in ARRAY_TYPES else UNKNOWN


def _literal_value(node: ast.AST):
    """The number a literal (or negated literal) denotes, else None."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal_value(node.operand)
        return None if value is None else (-value if isinstance(node.op, ast.USub) else value)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    return None


def _exact_in(value: float, fmt: str) -> bool:
    try:
        return struct.unpack(fmt, struct.pack(fmt, value))[0] == value
    except (OverflowError, struct.error):
        return False


def exact_in_float32(value: float) -> bool:
    return _exact_in(value, "<f")


def exact_in_half_types(value: float) -> bool:
    """Exact in float16 and in bfloat16 (a float32 whose low 16 bits are zero)."""
    if not (_exact_in(value, "<e") and exact_in_float32(value)):
        return False
    return struct.unpack("<I", struct.pack("<f", value))[0] & 0xFFFF == 0


def _is_float64_dtype(node: ast.AST, aliases: Dict[str, str]) -> bool:
    return qualified_name(node, aliases) in ("mlx.core.float64", "torch.float64", "torch.double")


def _dtype_keyword(call: ast.Call) -> Optional[ast.AST]:
    for keyword in call.keywords:
        if keyword.arg == "dtype":
            return keyword.value
    return None


def _mentions_gpu(node: ast.AST, aliases: Dict[str, str]) -> bool:
    return any(qualified_name(sub, aliases) == "mlx.core.gpu" for sub in ast.walk(node))


# ---------------------------------------------------------------- per-file analysis

class FileAnalysis:
    """Walks one module: class attribute kinds first, then every function in order."""

    def __init__(self, tree: ast.Module, path: str):
        self.tree = tree
        self.path = path
        self.aliases = import_aliases(tree)
        self.findings: List[Finding] = []
        self.function_returns: Dict[str, object] = {}
        self.module_classes = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.function_returns[node.name] = _annotation_kind(node.returns, self.aliases)
            elif isinstance(node, ast.ClassDef):
                self.module_classes.add(node.name)
        self.gpu_default_line = self._gpu_default_line()

    def add(self, node: ast.AST, rule: str, severity: str, message: str) -> None:
        self.findings.append(make_finding(self.path, node, rule, severity, message))

    def qualified(self, node: ast.AST) -> Optional[str]:
        return qualified_name(node, self.aliases)

    def _gpu_default_line(self) -> Optional[int]:
        for node in ast.walk(self.tree):
            if (isinstance(node, ast.Call)
                    and self.qualified(node.func) in ("mlx.core.set_default_device",
                                                      "mlx.core.set_default_stream")
                    and node.args and _mentions_gpu(node.args[0], self.aliases)):
                return node.lineno
        return None

    # ---- driver
    def run(self) -> List[Finding]:
        self._check_tf32()
        self._check_float64_on_gpu()
        self._visit_body(self.tree.body, class_attrs=None)
        return self.findings

    def _visit_body(self, body: Iterable[ast.stmt], class_attrs) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                self._visit_body(node.body, self._class_attributes(node))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._visit_function(node, class_attrs)

    def _class_attributes(self, cls: ast.ClassDef) -> Dict[str, object]:
        """``self.x = ...`` anywhere in the class: array, module, float or int, else unknown;
        an attribute assigned two different kinds is unknown."""
        attrs: Dict[str, object] = {}
        methods = [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for method in methods:
            env = FunctionEnv(self, method, {})
            for node in ast.walk(method):
                if not isinstance(node, ast.Assign):
                    continue
                for target in node.targets:
                    if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                            and target.value.id == "self"):
                        kind = env.kind(node.value)
                        previous = attrs.get(target.attr, kind)
                        attrs[target.attr] = kind if previous == kind else UNKNOWN
        for node in cls.body:  # class-level annotations: ``weight: mx.array``
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                attrs.setdefault(node.target.id, _annotation_kind(node.annotation, self.aliases))
        return attrs

    def _visit_function(self, function, class_attrs) -> None:
        env = FunctionEnv(self, function, class_attrs or {})
        env.visit_body()
        for node in function.body:  # nested functions and classes
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._visit_function(node, class_attrs)

    # ---- file-wide rules
    def _check_tf32(self) -> None:
        torch_cuda = False
        torch_conv = None
        cudnn_tf32_off = False
        mlx_gpu_matmul = None
        mlx_tf32_off = False
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    name = self.qualified(target)
                    value = node.value.value if isinstance(node.value, ast.Constant) else None
                    if name in ("torch.backends.cuda.matmul.allow_tf32",
                                "torch.backends.cudnn.allow_tf32"):
                        if value is True:
                            self.add(node, "MP008", ERROR,
                                     f"{name} = True: float32 matmuls and convolutions on "
                                     f"CUDA round their inputs to TF32 (10-bit mantissa)")
                        elif name.endswith("cudnn.allow_tf32") and value is False:
                            cudnn_tf32_off = True
                    if (isinstance(target, ast.Subscript)
                            and self.qualified(target.value) == "os.environ"
                            and _constant(target.slice) == "MLX_ENABLE_TF32"):
                        if value is not None and str(value) != "0":
                            self.add(node, "MP008", ERROR,
                                     "MLX_ENABLE_TF32 enabled: MLX's CUDA float32 matmuls "
                                     "run in TF32")
                        elif str(value) == "0":
                            mlx_tf32_off = True
            elif isinstance(node, ast.Call):
                name = self.qualified(node.func)
                if name == "torch.set_float32_matmul_precision" and node.args:
                    if _constant(node.args[0]) in ("high", "medium"):
                        self.add(node, "MP008", ERROR,
                                 f"set_float32_matmul_precision({_constant(node.args[0])!r}) "
                                 f"lets CUDA float32 matmuls run in TF32 / bf16")
                elif name in ("os.environ.setdefault", "os.putenv") and len(node.args) == 2:
                    if _constant(node.args[0]) == "MLX_ENABLE_TF32":
                        if str(_constant(node.args[1])) != "0":
                            self.add(node, "MP008", ERROR,
                                     "MLX_ENABLE_TF32 enabled: MLX's CUDA float32 matmuls "
                                     "run in TF32")
                        else:
                            mlx_tf32_off = True
                elif _in_module(name, "torch.nn.Conv1d", "torch.nn.Conv2d", "torch.nn.Conv3d",
                                "torch.nn.functional.conv1d", "torch.nn.functional.conv2d",
                                "torch.nn.functional.conv3d"):
                    torch_conv = torch_conv or node
                elif name in ("mlx.core.matmul", "mlx.core.addmm", "mlx.nn.Linear"):
                    mlx_gpu_matmul = mlx_gpu_matmul or node
                if isinstance(node.func, ast.Attribute) and node.func.attr in ("cuda", "to"):
                    if node.func.attr == "cuda" or any(
                            _constant(arg) == "cuda" for arg in node.args):
                        torch_cuda = True
                for keyword in node.keywords:
                    if keyword.arg == "device" and str(_constant(keyword.value)).startswith("cuda"):
                        torch_cuda = True
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
                mlx_gpu_matmul = mlx_gpu_matmul or node
        if torch_cuda and torch_conv is not None and not cudnn_tf32_off:
            self.add(torch_conv, "MP008", WARNING,
                     "float32 convolution on CUDA with torch.backends.cudnn.allow_tf32 at its "
                     "default (True): cuDNN rounds the inputs to TF32")
        if (self.gpu_default_line is not None and mlx_gpu_matmul is not None
                and "mlx.core" in self.aliases.values() and not mlx_tf32_off):
            self.add(mlx_gpu_matmul, "MP008", WARNING,
                     "float32 matmul on mx.gpu: MLX_ENABLE_TF32 defaults to 1, so on CUDA it "
                     "runs in TF32 (Metal has no TF32)")

    def _check_float64_on_gpu(self) -> None:
        """float64 created inside ``with mx.stream(mx.gpu)``, in a call with ``stream=mx.gpu``,
        or anywhere after ``mx.set_default_device(mx.gpu)`` (unless on ``stream=mx.cpu``)."""
        reported = set()

        def report(node, why):
            if node.lineno not in reported:
                reported.add(node.lineno)
                self.add(node, "MP007", ERROR, f"float64 array {why}")

        for node in ast.walk(self.tree):
            if isinstance(node, ast.With):
                for item in node.items:
                    expr = item.context_expr
                    if (isinstance(expr, ast.Call) and self.qualified(expr.func) in (
                            "mlx.core.stream", "mlx.core.Stream")
                            and _mentions_gpu(expr, self.aliases)):
                        for sub in ast.walk(node):
                            if _is_float64_dtype(sub, self.aliases) and sub is not None:
                                report(sub, "inside a `with mx.stream(mx.gpu)` block")
            elif isinstance(node, ast.Call):
                stream = next((k.value for k in node.keywords if k.arg == "stream"), None)
                if stream is not None and _mentions_gpu(stream, self.aliases):
                    if any(_is_float64_dtype(sub, self.aliases) for sub in ast.walk(node)):
                        report(node, "in an op on stream=mx.gpu")
        if self.gpu_default_line is None:
            return
        for node in ast.walk(self.tree):
            if (isinstance(node, ast.Call) and getattr(node, "lineno", 0) > self.gpu_default_line
                    and any(_is_float64_dtype(sub, self.aliases)
                            for sub in [*node.args, *(k.value for k in node.keywords)])):
                stream = next((k.value for k in node.keywords if k.arg == "stream"), None)
                if stream is None or not any(self.qualified(s) == "mlx.core.cpu"
                                             for s in ast.walk(stream)):
                    report(node, f"after mx.set_default_device(mx.gpu) (line "
                                 f"{self.gpu_default_line}) without stream=mx.cpu")


def _constant(node: ast.AST):
    return node.value if isinstance(node, ast.Constant) else None


class FunctionEnv:
    """Kinds of the local names of one function, updated statement by statement, and the
    per-expression rules (MP001-MP005) checked as the statements are visited."""

    def __init__(self, analysis: FileAnalysis, function, class_attrs: Dict[str, object]):
        self.analysis = analysis
        self.function = function
        self.class_attrs = class_attrs
        self.names: Dict[str, object] = {}
        self.fft_products: set = set()  # names bound to mx.fft.rfft results
        self.numpy_depth = 0  # > 0 inside a reported numpy call: one finding per expression
        arguments = function.args
        positional = arguments.posonlyargs + arguments.args
        defaults = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
        defaults += list(arguments.kw_defaults)
        is_entry = function.name in ("__call__", "forward")
        for arg, default in zip(positional + arguments.kwonlyargs, defaults):
            kind = _annotation_kind(arg.annotation, analysis.aliases)
            if kind is UNKNOWN and default is not None:
                literal = _literal_value(default)
                kind = FLOAT if isinstance(literal, float) else INT if literal is not None else UNKNOWN
            # Unannotated parameters of forward / __call__ are the module's inputs.
            if kind is UNKNOWN and is_entry and arg.arg != "self" and default is None:
                kind = ARRAY
            self.names[arg.arg] = kind
        returns = _annotation_kind(function.returns, analysis.aliases)
        # A function declared to return something else than arrays (None, a Python number,
        # a numpy array, a list...) hands results to the host: it is not a compute path.
        host_side = function.returns is not None and returns is not ARRAY
        self.compute = is_entry or returns is ARRAY or (not host_side and any(
            _is_array(kind) for kind in self.names.values()))

    # ---- kinds
    def kind(self, node: ast.AST):
        literal = _literal_value(node)
        if literal is not None:
            return FLOAT if isinstance(literal, float) else INT
        if isinstance(node, ast.Name):
            return self.names.get(node.id, UNKNOWN)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return self.class_attrs.get(node.attr, UNKNOWN)
            if node.attr in SCALAR_ATTRIBUTES:
                return UNKNOWN
            base = self.kind(node.value)
            return ARRAY if _is_array(base) and node.attr in ("T", "real", "imag", "mT") else UNKNOWN
        if isinstance(node, ast.Subscript):
            base = self.kind(node.value)
            return base if _is_array(base) else UNKNOWN
        if isinstance(node, ast.BinOp):
            kinds = (self.kind(node.left), self.kind(node.right))
            if isinstance(node.op, ast.Pow) and isinstance(_literal_value(node.right), float) \
                    and kinds[0] in (UNKNOWN, INT, FLOAT):
                return FLOAT  # ``head_dim ** -0.5``: a number raised to a fractional power
            if ARRAY64 in kinds:
                return ARRAY64
            if ARRAY in kinds:
                return ARRAY
            if UNKNOWN in kinds or MODULE in kinds:
                return UNKNOWN
            if isinstance(node.op, ast.Div) or FLOAT in kinds:
                return FLOAT
            return INT
        if isinstance(node, ast.UnaryOp):
            return self.kind(node.operand)
        if isinstance(node, ast.Call):
            return self._call_kind(node)
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts and all(
                self.kind(element) is MODULE for element in node.elts):
            return MODULE_LIST
        if isinstance(node, ast.ListComp) and self.kind(node.elt) is MODULE:
            return MODULE_LIST
        return UNKNOWN

    def _call_kind(self, call: ast.Call):
        name = self.analysis.qualified(call.func)
        dtype = _dtype_keyword(call)
        if name is not None:
            if name in NON_ARRAY_CALLS:
                return UNKNOWN
            if name.startswith("math."):
                return FLOAT
            if name in ("mlx.nn.Module", "torch.nn.Module") or (
                    name.split(".")[-1][:1].isupper() and _in_module(name, "mlx.nn", "torch.nn")):
                return MODULE
            if _in_module(name, *ARRAY_MODULES):
                if dtype is not None and _is_float64_dtype(dtype, self.analysis.aliases):
                    return ARRAY64
                if name in ("mlx.core.array", "torch.tensor") and len(call.args) > 1 and \
                        _is_float64_dtype(call.args[1], self.analysis.aliases):
                    return ARRAY64
                return ARRAY
            return UNKNOWN
        func = call.func
        if self.kind(func) is MODULE:
            return ARRAY
        if isinstance(func, ast.Name):
            if func.id == "float":
                return FLOAT
            if func.id in ("int", "len", "round"):
                return INT
            if func.id in self.analysis.module_classes:
                return MODULE
            return self.analysis.function_returns.get(func.id, UNKNOWN)
        if isinstance(func, ast.Attribute):
            receiver = self.kind(func.value)
            if receiver is MODULE:
                return ARRAY
            if _is_array(receiver):
                if func.attr in ARRAY_METHODS_RETURNING_SCALARS:
                    return FLOAT if func.attr == "item" else UNKNOWN
                if func.attr == "astype" and call.args:
                    return ARRAY64 if _is_float64_dtype(call.args[0], self.analysis.aliases) else ARRAY
                if func.attr in ("double",):
                    return ARRAY64
                if func.attr in ("float", "half", "bfloat16", "to"):
                    return ARRAY
                return receiver
        return UNKNOWN

    # ---- statement walk
    def visit_body(self) -> None:
        for statement in self.function.body:
            self._visit(statement)

    def _bind(self, target: ast.AST, kind, value: Optional[ast.AST]) -> None:
        if isinstance(target, ast.Name):
            self.names[target.id] = kind
            if value is not None and self._is_rfft(value):
                self.fft_products.add(target.id)
            else:
                self.fft_products.discard(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            element_kind = ARRAY if _is_array(kind) else UNKNOWN
            values = value.elts if isinstance(value, (ast.Tuple, ast.List)) and \
                len(value.elts) == len(target.elts) else [None] * len(target.elts)
            for element, element_value in zip(target.elts, values):
                self._bind(element, self.kind(element_value) if element_value is not None
                           else element_kind, element_value)

    def _visit(self, node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            return  # visited on their own
        if isinstance(node, ast.Assign):
            self._visit(node.value)
            kind = self.kind(node.value)
            for target in node.targets:
                self._bind(target, kind, node.value)
            return
        if isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self._visit(node.value)
            kind = _annotation_kind(node.annotation, self.analysis.aliases)
            if kind is UNKNOWN and node.value is not None:
                kind = self.kind(node.value)
            self._bind(node.target, kind, node.value)
            return
        if isinstance(node, ast.AugAssign):
            self._visit(node.value)
            if self.compute:
                self._check_scalar_operands(node, self.kind(node.target), node.value)
            return
        if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            self._visit(node.iter)
            iter_kind = self.kind(node.iter)
            is_range = isinstance(node.iter, ast.Call) and isinstance(node.iter.func, ast.Name) \
                and node.iter.func.id == "range"
            element_kind = INT if is_range else ARRAY if _is_array(iter_kind) else \
                MODULE if iter_kind is MODULE_LIST else UNKNOWN
            self._bind(node.target, element_kind, None)
            for child in getattr(node, "body", []) + getattr(node, "orelse", []) + \
                    getattr(node, "ifs", []):
                self._visit(child)
            return
        if isinstance(node, (ast.If, ast.While, ast.Assert)):
            self._visit_condition(node.test)
            for child in ast.iter_child_nodes(node):
                if child is not node.test:
                    self._visit(child)
            return
        if isinstance(node, ast.BoolOp) or (isinstance(node, ast.UnaryOp)
                                             and isinstance(node.op, ast.Not)):
            self._visit_condition(node)
            return
        skip = None
        if self.compute:
            if isinstance(node, ast.BinOp):
                self._check_binop(node)
            elif isinstance(node, ast.Call):
                self._check_call(node)
                if _in_module(self.analysis.qualified(node.func), "numpy"):
                    skip = node.func  # reported as a call
            elif isinstance(node, ast.Attribute) and _in_module(
                    self.analysis.qualified(node), "numpy"):
                if not self.numpy_depth:
                    self.analysis.add(node, "MP003", ERROR,
                                      f"numpy name {ast.unparse(node)} in a compute path")
                return
        numpy_call = skip is not None
        self.numpy_depth += numpy_call
        if isinstance(node, ast.Call) and self._is_mx_fft(node, "irfft", "ifft", "irfftn"):
            self._check_composed_fft_conv(node)
        for child in ast.iter_child_nodes(node):
            if child is not skip:
                self._visit(child)
        self.numpy_depth -= numpy_call

    def _visit_condition(self, test: ast.AST) -> None:
        """A condition: ``.item()`` here reads a truth value, not a number to compute with."""
        nodes = test.values if isinstance(test, ast.BoolOp) else [
            test.operand if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) else test]
        for node in nodes:
            operands = [node.left, *node.comparators] if isinstance(node, ast.Compare) else [node]
            for operand in operands:
                if (isinstance(operand, ast.Call) and isinstance(operand.func, ast.Attribute)
                        and operand.func.attr == "item" and not operand.args):
                    self._visit(operand.func.value)
                else:
                    self._visit(operand)

    # ---- MP001
    def _check_binop(self, node: ast.BinOp) -> None:
        if not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv,
                                    ast.Mod, ast.Pow)):
            return
        left, right = self.kind(node.left), self.kind(node.right)
        if _is_array(left):
            self._check_scalar_operands(node, left, node.right)
        elif _is_array(right):
            self._check_scalar_operands(node, right, node.left)

    def _check_scalar_operands(self, node: ast.AST, array_kind, scalar: ast.AST) -> None:
        if not _is_array(array_kind):
            return
        literal = _literal_value(scalar)
        if literal is not None:
            if exact_in_half_types(literal):
                return  # the same value in every float dtype: nothing is rounded
            if not exact_in_float32(literal):
                self.analysis.add(scalar, "MP001", ERROR,
                                  f"Python literal {literal!r} in array arithmetic is rounded "
                                  f"to whatever dtype the array has (torch rounds it to its "
                                  f"compute type instead)")
            else:
                inexact = "bfloat16" if _exact_in(literal, "<e") else "float16 and bfloat16"
                self.analysis.add(scalar, "MP001", WARNING,
                                  f"Python literal {literal!r} in array arithmetic is not "
                                  f"exact in {inexact} arrays")
            return
        if self._is_scalar_extraction(scalar):
            return  # MP002 reports it
        if self.kind(scalar) is FLOAT:
            self.analysis.add(scalar, "MP001", WARNING,
                              f"Python float `{ast.unparse(scalar)}` in array arithmetic: its "
                              f"value is rounded to the array's dtype at every call")

    # ---- MP002, MP003, MP004, MP006, and MP001 in elementwise calls
    def _check_call(self, call: ast.Call) -> None:
        analysis = self.analysis
        name = analysis.qualified(call.func)
        func = call.func
        if isinstance(func, ast.Name) and func.id in ("float", "int") and call.args \
                and _is_array(self.kind(call.args[0])):
            analysis.add(call, "MP002", ERROR,
                         f"{func.id}() on an array makes a Python scalar (a device sync and a "
                         f"double rounding when it re-enters the computation)")
        elif isinstance(func, ast.Attribute) and func.attr in ("item", "tolist") and not call.args:
            receiver = self.kind(func.value)
            if _is_array(receiver) or (receiver is UNKNOWN and not self._is_predicate(func.value)):
                analysis.add(call, "MP002", ERROR,
                             f".{func.attr}() on an array in compute code leaves the array "
                             f"world (a device sync, and Python floats downstream)")
        if _in_module(name, "numpy") and not self.numpy_depth:
            analysis.add(call, "MP003", ERROR, f"numpy call {ast.unparse(call.func)}() in a "
                         f"compute path: it leaves MLX's graph (no device, no autodiff)")
        elif isinstance(func, ast.Attribute) and func.attr == "numpy" and not call.args \
                and _is_array(self.kind(func.value)):
            analysis.add(call, "MP003", ERROR, f"{ast.unparse(call)} in a compute path: the "
                         f"array leaves the graph for numpy")
        if self._is_mx_fft(call) and call.args and self.kind(call.args[0]) is ARRAY64:
            analysis.add(call, "MP004", ERROR,
                         f"{ast.unparse(call.func)} of a float64 array: MLX computes it in "
                         f"complex64 without saying so")
        if name in ("mlx.core.fast.layer_norm", "mlx.core.addmm"):
            what = "mx.fast.layer_norm" if "layer_norm" in name else "mx.addmm"
            analysis.add(call, "MP006", WARNING,
                         f"{what} reduces in a backend-dependent order (float32 "
                         f"accumulation): results differ from torch's in the last bits")
        if name is not None and name.split(".")[-1] in ELEMENTWISE_BINARY \
                and _in_module(name, "mlx.core", "torch"):
            arrays = [arg for arg in call.args if _is_array(self.kind(arg))]
            if arrays:
                for arg in call.args:
                    if arg not in arrays:
                        self._check_scalar_operands(arg, ARRAY, arg)

    def _is_scalar_extraction(self, node: ast.AST) -> bool:
        if not isinstance(node, ast.Call) or not node.args and not isinstance(
                node.func, ast.Attribute):
            return False
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("float", "int"):
            return _is_array(self.kind(node.args[0]))
        return isinstance(func, ast.Attribute) and func.attr in ("item", "tolist")

    def _is_predicate(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Compare):
            return True
        if isinstance(node, ast.Call):
            name = self.analysis.qualified(node.func) or ""
            attr = node.func.attr if isinstance(node.func, ast.Attribute) else ""
            return name.split(".")[-1] in PREDICATES or attr in PREDICATES
        return False

    # ---- MP005
    def _is_mx_fft(self, call: ast.Call, *names: str) -> bool:
        name = self.analysis.qualified(call.func)
        if not _in_module(name, "mlx.core.fft"):
            return False
        return not names or name.split(".")[-1] in names

    def _is_rfft(self, node: ast.AST) -> bool:
        while isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Div, ast.Mult)) and \
                not self._is_product_of_spectra(node):
            node = node.left  # rfft(k, n) / n
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "conj":
            node = node.func.value
        if isinstance(node, ast.Name):
            return node.id in self.fft_products
        return isinstance(node, ast.Call) and self._is_mx_fft(node, "rfft", "fft", "rfftn")

    def _is_product_of_spectra(self, node: ast.AST) -> bool:
        return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)
                and self._is_rfft(node.left) and self._is_rfft(node.right))

    def _check_composed_fft_conv(self, call: ast.Call) -> None:
        if call.args and self._is_product_of_spectra(call.args[0]):
            self.analysis.add(call, "MP005", WARNING,
                              "FFT convolution composed from mx.fft (irfft(rfft(u) * rfft(k))): "
                              "float32 twiddles and spectra, error grows with log n and |k|")
