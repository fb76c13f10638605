//! A small seeded generator for the bootstrap (and the tests' simulations): SplitMix64
//! (Steele, Lea and Flood 2014). Seeded, so inferring a stored run twice gives the same
//! intervals; no dependency for the few draws this needs.

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A Poisson draw with mean `mean`: Knuth's product method below 30, above it the
    /// normal approximation (skewness `1/sqrt(mean)` < 0.19), rounded.
    pub fn poisson(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        if mean < 30.0 {
            let limit = (-mean).exp();
            let mut product = self.next_f64();
            let mut draws = 0;
            while product > limit {
                product *= self.next_f64();
                draws += 1;
            }
            return draws;
        }
        (mean + mean.sqrt() * self.normal()).round().max(0.0) as u64
    }

    /// True with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_draws_have_the_right_mean_and_variance() {
        let mut rng = SplitMix64::new(7);
        for mean in [0.5, 4.0, 29.0, 31.0, 1000.0] {
            let n = 20_000;
            let draws: Vec<f64> = (0..n).map(|_| rng.poisson(mean) as f64).collect();
            let m = draws.iter().sum::<f64>() / n as f64;
            let v = draws.iter().map(|d| (d - m).powi(2)).sum::<f64>() / (n - 1) as f64;
            // Standard error of the mean is sqrt(mean / n): allow 5 of them.
            assert!(
                (m - mean).abs() < 5.0 * (mean / n as f64).sqrt(),
                "{mean}: {m}"
            );
            assert!((v / mean - 1.0).abs() < 0.1, "{mean}: variance {v}");
        }
    }
}
