//! Build (or find built) the last release's `measurelab` and
//! `measurelab-guest-agent` (`compat/released/RELEASE`) and print their
//! directory. `scripts/test.sh` runs it before the acceptance tests, so the
//! release's build is timed on its own and not inside a test's time limit.

use std::time::Instant;

use measurelab_acceptance::release::Release;

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let release = Release::recorded()?;
    let dir = release.binaries()?;
    eprintln!(
        "release {} ({}) ready in {:.1?}",
        release.version,
        release.commit,
        started.elapsed()
    );
    println!("{}", dir.display());
    Ok(())
}
