//! Fuzzes config parsing: any text through the YAML loader, `${VAR}` substitution and the
//! validating walker must give a config or a list of errors, never a panic.
#![no_main]

use std::path::PathBuf;

use herald::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Some variables are set, some not, so both substitution paths run.
    let env = |name: &str| name.starts_with('H').then(|| format!("{name}-value"));
    let _ = Config::from_yaml(text, PathBuf::from("/nonexistent"), &env);
});
