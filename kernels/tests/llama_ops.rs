//! GPU tests of the decoder kernels (`cu/llama.cu`) against the CPU references in
//! `hyperllama_kernels::reference`, over random shapes, seeds and weight types. Without a CUDA
//! driver (or GPU) each test prints a SKIPPED line and returns.
//!
//! Tolerances (all outputs f32): GEMV and embedding `rel_l2 <= 1e-5` (dequantisation is exact
//! in f32, only the summation order differs); SwiGLU `1e-6 + 1e-5*|ref|`; RoPE `2e-3` absolute
//! for positions < 8192 (the device computes the angle in f32, as llama.cpp does); paged
//! attention `rel_l2 <= 1e-4` and `max_abs <= 2e-3` against an f64 softmax over the
//! f16-rounded cache; argmax exact.

use hyperllama_kernels::check::{SplitMix64, report_skip};
use hyperllama_kernels::{
    AttentionScratch, F16, FloatElement, Gpu, KvWrite, ModuleCache, PagedAttention, Rope, WeightType,
    dequantize_row, driver_present, gpus, random_weights, reference,
};

fn gpu_or_skip(test: &str) -> Option<(Gpu, tempfile::TempDir)> {
    if !driver_present() {
        report_skip(&format!("no CUDA driver found (kernel {test} test needs a GPU)"));
        return None;
    }
    match gpus() {
        Ok(list) if list.is_empty() => {
            report_skip(&format!("the CUDA driver reports no GPU (kernel {test} test needs one)"));
            None
        }
        Ok(_) => {
            let dir = tempfile::tempdir().expect("temp cache dir");
            let gpu = Gpu::open(0, ModuleCache::new(dir.path().to_path_buf())).expect("open GPU 0");
            Some((gpu, dir))
        }
        Err(e) => panic!("driver present but GPU discovery failed: {e}"),
    }
}

/// ||got - want|| / ||want|| and max |got - want|; NaN counts as infinite error.
fn errors(got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den, mut max) = (0f64, 0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        let d = f64::from(*g) - f64::from(*w);
        if d.is_nan() {
            return (f64::INFINITY, f64::INFINITY);
        }
        num += d * d;
        den += f64::from(*w) * f64::from(*w);
        max = max.max(d.abs());
    }
    ((num / den.max(1e-30)).sqrt(), max)
}

/// The int8-activation GEMVs of a quantised type against the reference GEMVs of the quantised
/// x (`q * d`, which is what they compute), and the quantisation itself. `ws`: the main matrix
/// (`rows`), the second GLU matrix (`rows`), k and v (`rows / 4`).
fn int8_gemvs_match_reference(
    gpu: &Gpu,
    ty: WeightType,
    rows: usize,
    cols: usize,
    x: &[f32],
    ws: [&[u8]; 4],
) {
    let xq = reference::quantize_q8_1(x);
    let dx = gpu.upload(x).unwrap();
    let mut act = gpu.act_q8(cols).unwrap();
    gpu.quantize_act(&dx, 1, cols, &mut act).unwrap();
    let kv_rows = (rows / 4).max(1);
    let up = |w: &[u8], r: usize| gpu.upload_weight(ty, r, cols, w).unwrap();
    let (dw, dw2, dk, dv) = (up(ws[0], rows), up(ws[1], rows), up(ws[2], kv_rows), up(ws[3], kv_rows));
    let want = reference::gemv(ty, ws[0], rows, cols, &xq);
    let mut dy = gpu.upload(&vec![f32::NAN; rows]).unwrap();
    gpu.gemv_q8(&dw, &act, &mut dy).unwrap();
    let (rel, max) = errors(&gpu.download(&dy).unwrap(), &want);
    assert!(rel <= 1e-5, "gemv_q8 {ty:?} {rows}x{cols}: rel {rel:e} max {max:e}");
    // Quantising x costs at most half a step per value: against the f32 x the error stays small.
    let (rel, _) = errors(&gpu.download(&dy).unwrap(), &reference::gemv(ty, ws[0], rows, cols, x));
    assert!(rel <= 2e-2, "gemv_q8 {ty:?} {rows}x{cols} vs f32 activations: rel {rel:e}");

    let want2 = reference::gemv(ty, ws[1], rows, cols, &xq);
    let mut dy = gpu.upload(&vec![f32::NAN; rows]).unwrap();
    gpu.gemv_glu_q8(&dw, &dw2, &act, &mut dy).unwrap();
    let (rel, max) = errors(&gpu.download(&dy).unwrap(), &reference::swiglu(&want, &want2));
    assert!(rel <= 2e-5, "gemv_glu_q8 {ty:?} {rows}x{cols}: rel {rel:e} max {max:e}");

    let mut y0 = gpu.upload(&vec![f32::NAN; rows]).unwrap();
    let mut y1 = gpu.upload(&vec![f32::NAN; kv_rows]).unwrap();
    let mut y2 = gpu.upload(&vec![f32::NAN; kv_rows]).unwrap();
    gpu.gemv_multi_q8([&dw, &dk, &dv], &act, [&mut y0, &mut y1, &mut y2]).unwrap();
    for (got, want) in [
        (gpu.download(&y0).unwrap(), want),
        (gpu.download(&y1).unwrap(), reference::gemv(ty, ws[2], kv_rows, cols, &xq)),
        (gpu.download(&y2).unwrap(), reference::gemv(ty, ws[3], kv_rows, cols, &xq)),
    ] {
        let (rel, max) = errors(&got, &want);
        assert!(rel <= 1e-5, "gemv_multi_q8 {ty:?} {rows}x{cols}: rel {rel:e} max {max:e}");
    }
    // A matrix of another width, or f32 weights, are refused.
    let other = gpu.upload_weight(ty, 1, cols * 2, &random_weights(ty, 1, cols * 2, 9)).unwrap();
    assert!(gpu.gemv_q8(&other, &act, &mut dy).is_err());
}

#[test]
fn int8_activation_gemvs_match_reference() {
    let Some((gpu, _dir)) = gpu_or_skip("int8 gemv") else { return };
    let mut cases = 0;
    for ty in WeightType::ALL.into_iter().filter(|t| t.int8_dot()) {
        for &(rows, cols) in &[(64usize, 256usize), (37, 512), (300, 4096), (5, 14336), (1000, 14336)] {
            let seed = (rows * 131 + cols) as u64 ^ u64::from(ty.ggml_type()) << 40;
            let kv_rows = (rows / 4).max(1);
            let w = random_weights(ty, rows, cols, seed);
            let w2 = random_weights(ty, rows, cols, seed ^ 0x5555);
            let wk = random_weights(ty, kv_rows, cols, seed ^ 0x6666);
            let wv = random_weights(ty, kv_rows, cols, seed ^ 0x7777);
            // Activations as a model has them: mostly small, a few large (the per-block scale).
            let mut x: Vec<f32> = SplitMix64::new(seed + 1).vec(cols, -1.0, 1.0);
            x.iter_mut().step_by(97).for_each(|v| *v *= 40.0);
            int8_gemvs_match_reference(&gpu, ty, rows, cols, &x, [&w, &w2, &wk, &wv]);
            cases += 1;
        }
    }
    eprintln!("int8 gemv: {cases} cases passed on {}", gpu.name());
}

#[test]
fn gemv_and_embed_match_reference_for_every_weight_type() {
    let Some((gpu, _dir)) = gpu_or_skip("gemv/embed") else { return };
    let mut cases = 0;
    for ty in WeightType::ALL {
        for &(rows, cols) in &[(64usize, 256usize), (37, 512), (300, 4096), (5, 14336)] {
            for n in [1usize, 2, 3, 8, 11] {
                let seed = (rows * 31 + cols + n) as u64 ^ u64::from(ty.ggml_type()) << 32;
                let w = random_weights(ty, rows, cols, seed);
                let x: Vec<f32> = SplitMix64::new(seed + 1).vec(n * cols, -1.0, 1.0);
                let want = reference::gemv(ty, &w, rows, cols, &x);
                let dw = gpu.upload_weight(ty, rows, cols, &w).unwrap();
                let dx = gpu.upload(&x).unwrap();
                let mut dy = gpu.upload(&vec![f32::NAN; n * rows]).unwrap();
                gpu.gemv(&dw, &dx, n, &mut dy).unwrap();
                let got = gpu.download(&dy).unwrap();
                let (rel, max) = errors(&got, &want);
                assert!(rel <= 1e-5, "gemv {ty:?} {rows}x{cols} n={n}: rel {rel:e} max {max:e}");
                if n == 1 {
                    // Fused gate/up + SwiGLU against the reference GEMVs of two matrices.
                    let w2 = random_weights(ty, rows, cols, seed ^ 0x5555);
                    let want2 = reference::gemv(ty, &w2, rows, cols, &x);
                    let dw2 = gpu.upload_weight(ty, rows, cols, &w2).unwrap();
                    let mut dy = gpu.upload(&vec![f32::NAN; rows]).unwrap();
                    gpu.gemv_glu(&dw, &dw2, &dx, &mut dy).unwrap();
                    let (rel, max) = errors(&gpu.download(&dy).unwrap(), &reference::swiglu(&want, &want2));
                    assert!(rel <= 2e-5, "gemv_glu {ty:?} {rows}x{cols}: rel {rel:e} max {max:e}");
                    // Three projections of one x (q, k, v shapes: k and v have fewer rows).
                    let kv_rows = (rows / 4).max(1);
                    let wk = random_weights(ty, kv_rows, cols, seed ^ 0x6666);
                    let wv = random_weights(ty, kv_rows, cols, seed ^ 0x7777);
                    let (dk, dv) = (
                        gpu.upload_weight(ty, kv_rows, cols, &wk).unwrap(),
                        gpu.upload_weight(ty, kv_rows, cols, &wv).unwrap(),
                    );
                    let mut y0 = gpu.upload(&vec![f32::NAN; rows]).unwrap();
                    let mut y1 = gpu.upload(&vec![f32::NAN; kv_rows]).unwrap();
                    let mut y2 = gpu.upload(&vec![f32::NAN; kv_rows]).unwrap();
                    gpu.gemv_multi([&dw, &dk, &dv], &dx, [&mut y0, &mut y1, &mut y2]).unwrap();
                    for (got, want) in [
                        (gpu.download(&y0).unwrap(), want.clone()),
                        (gpu.download(&y1).unwrap(), reference::gemv(ty, &wk, kv_rows, cols, &x)),
                        (gpu.download(&y2).unwrap(), reference::gemv(ty, &wv, kv_rows, cols, &x)),
                    ] {
                        let (rel, max) = errors(&got, &want);
                        assert!(rel <= 1e-5, "gemv_multi {ty:?} {rows}x{cols}: rel {rel:e} max {max:e}");
                    }
                    for v in ["n1", "r2", "r4", "k1", "k2", "k4", "c2", "c4"] {
                        let mut dy = gpu.upload(&vec![f32::NAN; rows]).unwrap();
                        gpu.gemv_variant(&dw, &dx, &mut dy, v).unwrap();
                        let (rel, max) = errors(&gpu.download(&dy).unwrap(), &want);
                        assert!(rel <= 1e-5, "gemv {v} {ty:?} {rows}x{cols}: rel {rel:e} max {max:e}");
                    }
                }

                let ids: Vec<i32> = (0..n).map(|t| ((t * 7 + 3) % rows) as i32).collect();
                let dids = gpu.upload(&ids).unwrap();
                let mut de = gpu.upload(&vec![f32::NAN; n * cols]).unwrap();
                gpu.embed(&dw, &dids, n, &mut de).unwrap();
                let got = gpu.download(&de).unwrap();
                let rb = ty.row_bytes(cols);
                let want: Vec<f32> = ids
                    .iter()
                    .flat_map(|&r| dequantize_row(ty, &w[r as usize * rb..(r as usize + 1) * rb], cols))
                    .collect();
                let (rel, max) = errors(&got, &want);
                assert!(rel <= 1e-6, "embed {ty:?} {rows}x{cols} n={n}: rel {rel:e} max {max:e}");
                cases += 1;
            }
        }
    }
    eprintln!("gemv/embed: {cases} cases passed on {}", gpu.name());
}

#[test]
fn rope_matches_reference() {
    let Some((gpu, _dir)) = gpu_or_skip("rope") else { return };
    let mut cases = 0;
    for &(n_head, n_kv, head_dim, n_rot) in
        &[(4usize, 2usize, 64usize, 64usize), (32, 8, 128, 128), (2, 1, 128, 64)]
    {
        for neox in [false, true] {
            for with_factors in [false, true] {
                for seed in [1u64, 2] {
                    let n = 9;
                    let mut rng = SplitMix64::new(seed * 1000 + head_dim as u64);
                    let q: Vec<f32> = rng.vec(n * n_head * head_dim, -2.0, 2.0);
                    let k: Vec<f32> = rng.vec(n * n_kv * head_dim, -2.0, 2.0);
                    let pos: Vec<i32> = (0..n).map(|i| (i as i32) * 811 % 8191).collect();
                    let factors: Vec<f32> = (0..n_rot / 2).map(|_| rng.uniform(1.0, 8.0)).collect();
                    let (mut dq, mut dk) = (gpu.upload(&q).unwrap(), gpu.upload(&k).unwrap());
                    let dpos = gpu.upload(&pos).unwrap();
                    let dfac = gpu.upload(&factors).unwrap();
                    gpu.rope(Rope {
                        q: &mut dq,
                        k: &mut dk,
                        pos: &dpos,
                        n,
                        n_head,
                        n_kv,
                        head_dim,
                        n_rot,
                        base: 500000.0,
                        factors: with_factors.then_some(&dfac),
                        neox,
                    })
                    .unwrap();
                    let (gq, gk) = (gpu.download(&dq).unwrap(), gpu.download(&dk).unwrap());
                    let (mut wq, mut wk) = (q.clone(), k.clone());
                    let f = with_factors.then_some(factors.as_slice());
                    for t in 0..n {
                        for h in
                            wq[t * n_head * head_dim..(t + 1) * n_head * head_dim].chunks_exact_mut(head_dim)
                        {
                            reference::rope_head(h, pos[t], n_rot, 500000.0, f, neox);
                        }
                        for h in wk[t * n_kv * head_dim..(t + 1) * n_kv * head_dim].chunks_exact_mut(head_dim)
                        {
                            reference::rope_head(h, pos[t], n_rot, 500000.0, f, neox);
                        }
                    }
                    let (_, mq) = errors(&gq, &wq);
                    let (_, mk) = errors(&gk, &wk);
                    assert!(
                        mq <= 2e-3 && mk <= 2e-3,
                        "rope {n_head}/{n_kv}/{head_dim} neox={neox}: {mq:e} {mk:e}"
                    );
                    cases += 1;
                }
            }
        }
    }
    eprintln!("rope: {cases} cases passed on {}", gpu.name());
}

#[test]
fn swiglu_and_argmax_match_reference() {
    let Some((gpu, _dir)) = gpu_or_skip("swiglu/argmax") else { return };
    for n in [1usize, 100, 14336, 3 * 14336 + 5] {
        let mut rng = SplitMix64::new(n as u64);
        let g: Vec<f32> = rng.vec(n, -8.0, 8.0);
        let u: Vec<f32> = rng.vec(n, -2.0, 2.0);
        let mut out = gpu.upload(&vec![f32::NAN; n]).unwrap();
        gpu.swiglu(&mut out, &gpu.upload(&g).unwrap(), &gpu.upload(&u).unwrap(), n).unwrap();
        let got = gpu.download(&out).unwrap();
        for (i, (a, b)) in got.iter().zip(reference::swiglu(&g, &u)).enumerate() {
            assert!((a - b).abs() <= 1e-6 + 1e-5 * b.abs(), "swiglu n={n} at {i}: {a} vs {b}");
        }
    }
    for &(rows, cols) in &[(1usize, 128256usize), (5, 1000), (3, 7)] {
        let x: Vec<f32> = SplitMix64::new(cols as u64).vec(rows * cols, -10.0, 10.0);
        let mut out = gpu.upload(&vec![-1i32; rows]).unwrap();
        gpu.argmax(&mut out, &gpu.upload(&x).unwrap(), rows, cols).unwrap();
        let got = gpu.download(&out).unwrap();
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let want = (0..cols).fold(0, |b, i| if row[i] > row[b] { i } else { b });
            assert_eq!(got[r] as usize, want, "argmax row {r} of {rows}x{cols}");
        }
    }
    eprintln!("swiglu/argmax passed on {}", gpu.name());
}

struct AttnCase {
    n_head: usize,
    n_kv: usize,
    head_dim: usize,
    block_size: usize,
    split_len: usize,
    lens: Vec<usize>,
    seed: u64,
}

fn attention_case(gpu: &Gpu, c: &AttnCase) {
    let AttnCase { n_head, n_kv, head_dim: d, block_size, split_len, ref lens, seed } = *c;
    let mut rng = SplitMix64::new(seed);
    let width = n_kv * d;
    let max_len = *lens.iter().max().unwrap();
    let max_blocks = max_len.div_ceil(block_size);
    let n_blocks = lens.len() * max_blocks + 3;
    // Shuffled block ids: tables must be followed, not assumed contiguous.
    let mut ids: Vec<i32> = (0..n_blocks as i32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let tables: Vec<i32> = ids[..lens.len() * max_blocks].to_vec();
    let mut kc = gpu.upload(&vec![F16::from_f32(f32::NAN); n_blocks * block_size * width]).unwrap();
    let mut vc = gpu.upload(&vec![F16::from_f32(f32::NAN); n_blocks * block_size * width]).unwrap();
    // Every sequence's tokens written through kv_write, one batch of all tokens.
    let (mut ks, mut vs, mut slots) = (Vec::new(), Vec::new(), Vec::new());
    let mut host_k: Vec<Vec<f32>> = Vec::new();
    let mut host_v: Vec<Vec<f32>> = Vec::new();
    for (s, &len) in lens.iter().enumerate() {
        let k: Vec<f32> = rng.vec(len * width, -1.0, 1.0);
        let v: Vec<f32> = rng.vec(len * width, -1.0, 1.0);
        for j in 0..len {
            slots.push(tables[s * max_blocks + j / block_size] * block_size as i32 + (j % block_size) as i32);
        }
        ks.extend_from_slice(&k);
        vs.extend_from_slice(&v);
        host_k.push(k.iter().map(|&x| F16::from_f32(x).to_f32()).collect());
        host_v.push(v.iter().map(|&x| F16::from_f32(x).to_f32()).collect());
    }
    let n_tok = slots.len();
    gpu.kv_write(KvWrite {
        k_cache: &mut kc,
        v_cache: &mut vc,
        k: &gpu.upload(&ks).unwrap(),
        v: &gpu.upload(&vs).unwrap(),
        slots: &gpu.upload(&slots).unwrap(),
        n: n_tok,
        width,
    })
    .unwrap();
    // Queries: for each sequence, the last token (decode) and, for the first sequence, every
    // position (causal prefill).
    let (mut seq, mut ctx) = (Vec::new(), Vec::new());
    for (s, &len) in lens.iter().enumerate() {
        seq.push(s as i32);
        ctx.push(len as i32);
    }
    for j in 1..=lens[0] {
        seq.push(0);
        ctx.push(j as i32);
    }
    let nq = seq.len();
    let q: Vec<f32> = rng.vec(nq * n_head * d, -1.0, 1.0);
    let mut out = gpu.upload(&vec![f32::NAN; nq * n_head * d]).unwrap();
    let n_split = max_len.div_ceil(split_len);
    let mut scratch: AttentionScratch = gpu.attention_scratch(nq * n_head * n_split, d).unwrap();
    let scale = 1.0 / (d as f32).sqrt();
    gpu.paged_attention(PagedAttention {
        out: &mut out,
        q: &gpu.upload(&q).unwrap(),
        k_cache: &kc,
        v_cache: &vc,
        block_tables: &gpu.upload(&tables).unwrap(),
        seq: &gpu.upload(&seq).unwrap(),
        ctx: &gpu.upload(&ctx).unwrap(),
        n_query: nq,
        n_head,
        n_kv,
        head_dim: d,
        block_size,
        max_blocks,
        max_ctx: max_len,
        split_len,
        scale,
        scratch: &mut scratch,
    })
    .unwrap();
    let got = gpu.download(&out).unwrap();
    let mut want = Vec::with_capacity(got.len());
    for t in 0..nq {
        let (s, len) = (seq[t] as usize, ctx[t] as usize);
        for h in 0..n_head {
            let kvh = h / (n_head / n_kv);
            let gather = |src: &Vec<f32>| -> Vec<f32> {
                (0..len).flat_map(|j| src[j * width + kvh * d..j * width + kvh * d + d].to_vec()).collect()
            };
            let qh = &q[(t * n_head + h) * d..(t * n_head + h + 1) * d];
            want.extend(reference::attention_head(qh, &gather(&host_k[s]), &gather(&host_v[s]), d, scale));
        }
    }
    let (rel, max) = errors(&got, &want);
    assert!(
        rel <= 1e-4 && max <= 2e-3,
        "attention heads {n_head}/{n_kv} d={d} bs={block_size} split={split_len} lens={lens:?}: rel {rel:e} max {max:e}"
    );
}

#[test]
fn kv_write_and_paged_attention_match_reference() {
    let Some((gpu, _dir)) = gpu_or_skip("paged attention") else { return };
    let mut cases = 0;
    for &(n_head, n_kv, d) in &[(4usize, 4usize, 64usize), (32, 8, 128), (8, 2, 256), (14, 2, 64)] {
        for &(block_size, split_len) in &[(16usize, 32usize), (32, 256), (16, 512)] {
            for (i, lens) in [vec![1usize], vec![37, 5, 300], vec![700, 1, 64]].into_iter().enumerate() {
                attention_case(
                    &gpu,
                    &AttnCase {
                        n_head,
                        n_kv,
                        head_dim: d,
                        block_size,
                        split_len,
                        lens,
                        seed: i as u64 + d as u64,
                    },
                );
                cases += 1;
            }
        }
    }
    eprintln!("kv_write/paged attention: {cases} cases passed on {}", gpu.name());
}
