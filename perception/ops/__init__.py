"""Custom ops: the Python face of the pipeline's hot paths.

Every op follows one recipe (DESIGN.md, "Custom ops"):

- a **torch reference** in plain PyTorch (``*_reference``): the test oracle and a backend a user
  can pick (``backend="torch"``);
- a **fast CPU kernel** (numba ``parallel=True, cache=True``), the default on CPU (``"cpu"``);
- a **CUDA kernel** in ``ops/<op>/`` (repository root), built on first use where CUDA exists
  (``"cuda"``, see :mod:`perception.ops._native`);
- registration with ``torch.library`` (schema ``perception::<op>``, autograd, fake-tensor impl), so
  ops work under autograd and ``torch.compile``;
- tests against the reference over dtypes, shapes, empty input and edge cases, ``gradcheck`` in
  float64, ``torch.library.opcheck``; a row in ``tools/benchmark.py ops``.

``backend="auto"`` (the default) picks ``"cuda"`` for CUDA tensors and ``"cpu"`` otherwise.
Bad input: non-finite coordinates are excluded and counted (each op returns or exposes the
count), empty inputs give empty outputs of the right shape and dtype, wrong shapes raise
``ValueError`` naming the argument.
"""
