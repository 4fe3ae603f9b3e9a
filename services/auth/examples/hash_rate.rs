//! Measures Argon2id hashes per second on one core with the default (OWASP)
//! parameters: `cargo run --release -p trustmesh-auth --example hash_rate [seconds]`.

use std::time::{Duration, Instant};

use trustmesh_auth::password::{HashParams, Hasher};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5.0);
    let budget = Duration::from_secs_f64(seconds);
    let params = HashParams::default();
    let hasher = Hasher::new(params)?;
    let phc = hasher.hash("correct horse battery staple")?;

    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget {
        let t = Instant::now();
        let verified = hasher.verify("correct horse battery staple", &phc)?;
        samples.push(t.elapsed());
        assert!(verified.ok);
    }
    let total = start.elapsed();
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    println!(
        "Argon2id {params}: {} verifications in {:.2} s on one thread = {:.1} hashes/s; \
         per hash p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms",
        samples.len(),
        total.as_secs_f64(),
        samples.len() as f64 / total.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
    );
    Ok(())
}
