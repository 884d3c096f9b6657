use super::*;

fn params(f: impl FnOnce(&mut SamplerParams)) -> SamplerParams {
    let mut p =
        SamplerParams { temperature: 1.0, top_k: 0, top_p: 1.0, repeat_penalty: 1.0, ..Default::default() };
    f(&mut p);
    p
}

fn histogram(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<usize> {
    let mut h = vec![0; logits.len()];
    for _ in 0..n {
        h[s.sample(logits) as usize] += 1;
    }
    h
}

#[test]
fn greedy_is_first_maximum() {
    let mut s = Sampler::new(SamplerParams::greedy(), 100);
    assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0]), 1);
    assert!(s.argmax_suffices());
    let mut k1 = Sampler::new(params(|p| p.top_k = 1), 100);
    assert!(k1.is_greedy());
    assert_eq!(k1.sample(&[0.0, 3.0, 5.0]), 2);
}

#[test]
fn penalties_follow_llama_cpp_arithmetic() {
    let p = SamplerParams {
        repeat_penalty: 2.0,
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        repeat_last_n: 2,
        ..SamplerParams::greedy()
    };
    let mut s = Sampler::new(p, 100);
    assert!(!s.argmax_suffices());
    s.accept_prompt(&[0, 1, 1]); // window of 2 keeps [1, 1]
    let mut logits = vec![4.0, 4.0, -1.0];
    s.apply_penalties(&mut logits);
    // token 1: 4 / 2 - 2 * 0.5 - 0.25 = 0.75; token 0 left out of the window.
    assert_eq!(logits, vec![4.0, 0.75, -1.0]);
    s.accept(2);
    let mut logits = vec![4.0, 4.0, -1.0];
    s.apply_penalties(&mut logits);
    // window [1, 2]: token 1 once, token 2 negative: -1 * 2 - 0.5 - 0.25.
    assert_eq!(logits, vec![4.0, 1.25, -2.75]);
    // Greedy follows the penalized row.
    assert_eq!(s.sample(&[4.0, 4.5, 0.0]), 0);
}

#[test]
fn repeat_last_n_minus_one_is_context() {
    let mut s = Sampler::new(SamplerParams { repeat_last_n: -1, ..SamplerParams::greedy() }, 3);
    s.params.repeat_penalty = 2.0;
    let mut s = Sampler::new(s.params().clone(), 3);
    s.accept_prompt(&[0, 1, 2, 3]);
    let mut logits = vec![1.0; 4];
    s.apply_penalties(&mut logits);
    assert_eq!(logits, vec![1.0, 0.5, 0.5, 0.5]);
}

#[test]
fn seeded_draws_repeat_and_follow_probabilities() {
    let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
    let p = params(|p| p.seed = Some(42));
    let a: Vec<u32> = {
        let mut s = Sampler::new(p.clone(), 10);
        (0..50).map(|_| s.sample(&logits)).collect()
    };
    let b: Vec<u32> = {
        let mut s = Sampler::new(p.clone(), 10);
        (0..50).map(|_| s.sample(&logits)).collect()
    };
    assert_eq!(a, b);
    let h = histogram(&mut Sampler::new(p, 10), &logits, 20_000);
    assert_eq!(h[2], 0);
    let ratio = h[1] as f64 / h[0] as f64;
    assert!((ratio - 3.0).abs() < 0.25, "{h:?}");
}

#[test]
fn top_k_top_p_min_p_cut_the_tail() {
    let logits = [3.0f32, 2.0, 1.0, 0.0, -1.0];
    let h = histogram(
        &mut Sampler::new(
            params(|p| {
                p.top_k = 2;
                p.seed = Some(1)
            }),
            10,
        ),
        &logits,
        2000,
    );
    assert!(h[2..].iter().all(|&c| c == 0) && h[0] > 0 && h[1] > 0, "{h:?}");
    // softmax: 0.636, 0.234, 0.086, ...: top_p 0.8 keeps two.
    let h = histogram(
        &mut Sampler::new(
            params(|p| {
                p.top_p = 0.8;
                p.seed = Some(2)
            }),
            10,
        ),
        &logits,
        2000,
    );
    assert!(h[2..].iter().all(|&c| c == 0) && h[1] > 0, "{h:?}");
    // min_p 0.3: keep p >= 0.3 * p_max, i.e. logit >= 3 + ln 0.3 = 1.80.
    let h = histogram(
        &mut Sampler::new(
            params(|p| {
                p.min_p = 0.3;
                p.seed = Some(3)
            }),
            10,
        ),
        &logits,
        2000,
    );
    assert!(h[2..].iter().all(|&c| c == 0) && h[1] > 0, "{h:?}");
    // top_p that the first token alone reaches keeps only it.
    let h = histogram(
        &mut Sampler::new(
            params(|p| {
                p.top_p = 0.5;
                p.seed = Some(4)
            }),
            10,
        ),
        &logits,
        200,
    );
    assert_eq!(h[0], 200);
}

#[test]
fn typical_p_keeps_tokens_near_the_entropy() {
    // One dominant token and many tiny ones: the dominant token's surprisal is far below the
    // entropy only when the distribution is flat; here typical keeps the dominant token.
    let mut logits = vec![0.0f32; 50];
    logits[7] = 10.0;
    let h = histogram(
        &mut Sampler::new(
            params(|p| {
                p.typical_p = 0.5;
                p.seed = Some(5)
            }),
            10,
        ),
        &logits,
        300,
    );
    assert_eq!(h[7], 300);
}

#[test]
fn low_temperature_sharpens() {
    let logits = [1.0f32, 0.0];
    let cold = histogram(
        &mut Sampler::new(
            params(|p| {
                p.temperature = 0.1;
                p.seed = Some(6)
            }),
            10,
        ),
        &logits,
        1000,
    );
    let hot = histogram(
        &mut Sampler::new(
            params(|p| {
                p.temperature = 2.0;
                p.seed = Some(6)
            }),
            10,
        ),
        &logits,
        1000,
    );
    assert!(cold[0] > 990, "{cold:?}");
    assert!(hot[0] < 750 && hot[0] > 500, "{hot:?}");
}

#[test]
fn validation_and_log_prob() {
    assert!(params(|p| p.top_p = f32::NAN).validate().is_err());
    assert!(params(|p| p.min_p = 2.0).validate().is_err());
    assert!(SamplerParams::default().validate().is_ok());
    let lp = log_prob(&[0.0, 0.0], 1);
    assert!((lp - 0.5f32.ln()).abs() < 1e-6);
}
