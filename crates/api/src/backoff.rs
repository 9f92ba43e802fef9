//! Retry pacing shared by everything that reconnects (the RabbitMQ session,
//! the ZooKeeper session, connecting at start): capped exponential backoff is
//! done by each loop; this adds the jitter, so many clients that lost the same
//! server do not all retry in step.

use std::time::Duration;

/// `d` plus up to a quarter more, chosen at random.
pub fn jitter(d: Duration) -> Duration {
    let spread = u64::from(uuid::Uuid::new_v4().as_fields().0) % 1000;
    d + d.mul_f64(spread as f64 / 4000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_adds_at_most_a_quarter() {
        let d = Duration::from_millis(400);
        for _ in 0..100 {
            let j = jitter(d);
            assert!(j >= d && j <= d + d / 4, "{j:?}");
        }
    }
}
