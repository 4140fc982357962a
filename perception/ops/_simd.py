"""Explicit SIMD for the numba kernels: LLVM vector code where numba's auto-vectoriser falls short.

numba cannot tell LLVM that two arrays do not overlap, so a loop that stores into one array and
reads a fixed row of another reloads that row on every iteration (the store might have changed it).
In the splat forward that row is a Gaussian's feature vector, reloaded for every cell of its run:
four extra vector loads per (Gaussian, cell) pair, which also wait on the preceding stores whenever
their addresses agree in the low 12 bits. :func:`axpy_run` loads the row once and keeps it in
registers (``<16 x float>`` vectors; LLVM lowers them to whatever the machine has), and runs four
independent weight recurrences instead of one serial chain of multiplications, which was the other
half of the time. Together: 2.8x on that loop with an L1-resident accumulator (measured here).

numba's on-disk cache keys a kernel on its own source file only: after editing this module, delete
``perception/ops/__pycache__/*.nb[ci]`` or the kernels that inline it keep the old code.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16
CHAINS = 4  # independent weight recurrences in axpy_run (a power of two)


@intrinsic
def axpy_run(typingctx, acc, abase, astride, feats, fbase, n, w0, r, q, alpha, width):
    """``acc[abase + j astride + c] += alpha w_j feats[fbase + c]`` for ``c < width``, ``j < n``.

    ``w_0 = w0``, ``w_{j+1} = w_j r_j``, ``r_{j+1} = r_j q`` (the Gaussian weight recurrence along a run,
    in float64; each weight is rounded to the arrays' dtype). ``acc`` and ``feats``: 1-D contiguous
    arrays of one float dtype; ``width``: a literal multiple of 16. No bounds checks: the caller's
    indices must be in range.
    """
    if not (isinstance(acc, types.Array) and isinstance(feats, types.Array) and acc.dtype == feats.dtype
            and acc.dtype in (types.float32, types.float64) and acc.layout == "C" and feats.layout == "C"
            and isinstance(width, types.IntegerLiteral) and width.literal_value % LANES == 0):
        return None
    nvec = width.literal_value // LANES
    sig = types.void(acc, abase, astride, feats, fbase, n, w0, r, q, alpha, width)

    def codegen(context, builder, signature, args):
        tys = signature.args
        i64 = ir.IntType(64)
        abase_v, astride_v, fbase_v, n_v = (context.cast(builder, args[k], tys[k], types.int64) for k in (1, 2, 4, 5))
        w0_v, r_v, q_v, alpha_v = (context.cast(builder, args[k], tys[k], types.float64) for k in (6, 7, 8, 9))
        acc_data = context.make_array(tys[0])(context, builder, args[0]).data
        feat_data = context.make_array(tys[3])(context, builder, args[3]).data
        elt = context.get_value_type(tys[0].dtype)
        align = context.get_abi_sizeof(elt)
        vec = ir.VectorType(elt, LANES)
        fast = ("fast",)
        f64 = ir.DoubleType()

        def vptr(base, k):
            return builder.bitcast(builder.gep(base, [i64(LANES * k)]), vec.as_pointer())

        frow = builder.gep(feat_data, [fbase_v])
        f = [builder.load(vptr(frow, k), align=align) for k in range(nvec)]   # held in registers
        splat = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        i32 = ir.IntType(32)

        def add_cell(j, w):  # acc row j += (alpha w) * f
            wa = builder.fmul(alpha_v, w, flags=fast)
            if elt != f64:
                wa = builder.fptrunc(wa, elt)
            wv = builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), wa, i32(0)),
                                        ir.Constant(vec, ir.Undefined), splat)
            row = builder.gep(acc_data, [builder.add(abase_v, builder.mul(j, astride_v))])
            for k in range(nvec):
                p = vptr(row, k)
                a = builder.load(p, align=align)
                builder.store(builder.fadd(a, builder.fmul(wv, f[k], flags=fast), flags=fast), p, align=align)

        # CHAINS cells at a time: w_{j+U} = w_j m_j with m_j = r_j ... r_{j+U-1}, m_{j+U} = m_j q^(U^2):
        # CHAINS independent multiplications (one vector) instead of one serial chain through the run.
        U = CHAINS
        vd = ir.VectorType(f64, U)
        ws, rs = [w0_v], [r_v]  # w_0..w_{U-1}, r_0..r_{2U-2}
        for _ in range(U - 1):
            ws.append(builder.fmul(ws[-1], rs[len(ws) - 1], flags=fast))
            rs.append(builder.fmul(rs[-1], q_v, flags=fast))
        for _ in range(U - 1):
            rs.append(builder.fmul(rs[-1], q_v, flags=fast))
        m = []
        for u in range(U):
            prod = rs[u]
            for t in range(u + 1, u + U):
                prod = builder.fmul(prod, rs[t], flags=fast)
            m.append(prod)
        qU = q_v
        for _ in range(U.bit_length() - 1):          # q^U (U a power of two)
            qU = builder.fmul(qU, qU, flags=fast)
        qUU = qU
        for _ in range(U.bit_length() - 1):          # q^(U^2)
            qUU = builder.fmul(qUU, qUU, flags=fast)

        def pack(vals):
            v = ir.Constant(vd, ir.Undefined)
            for u, x in enumerate(vals):
                v = builder.insert_element(v, x, i32(u))
            return v

        w_slot = cgutils.alloca_once_value(builder, pack(ws))
        m_slot = cgutils.alloca_once_value(builder, pack(m))
        r_slot = cgutils.alloca_once_value(builder, r_v)      # r at the block's first cell (for the tail)
        qv = pack([qUU] * U)
        nblk = builder.sdiv(n_v, i64(U))
        with cgutils.for_range(builder, nblk) as loop:
            W = builder.load(w_slot)
            M = builder.load(m_slot)
            j0 = builder.mul(loop.index, i64(U))
            for u in range(U):
                add_cell(builder.add(j0, i64(u)), builder.extract_element(W, i32(u)))
            builder.store(builder.fmul(W, M, flags=fast), w_slot)
            builder.store(builder.fmul(M, qv, flags=fast), m_slot)
            builder.store(builder.fmul(builder.load(r_slot), qU, flags=fast), r_slot)
        e_slot = cgutils.alloca_once_value(builder, builder.extract_element(builder.load(w_slot), i32(0)))
        with cgutils.for_range(builder, n_v, start=builder.mul(nblk, i64(U))) as loop:   # the last n mod U
            e = builder.load(e_slot)
            rj = builder.load(r_slot)
            add_cell(loop.index, e)
            builder.store(builder.fmul(e, rj, flags=fast), e_slot)
            builder.store(builder.fmul(rj, q_v, flags=fast), r_slot)
        return context.get_dummy_value()

    return sig, codegen
