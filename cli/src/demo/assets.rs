//! stub
use super::DemoResult;
use crate::DemoArgs;
pub async fn run(_args: &DemoArgs, _seed: u64) -> DemoResult<bool> {
    Ok(false)
}
