//! Job files (`stm32boot job run FILE`): parsing and checking never panics, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use stm32boot::ops::job::Job;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Job::from_toml(text, Path::new("/fuzz/jobs/job.toml")) {
        Ok(job) => {
            for step in &job.steps {
                let _ = (step.kind(), step.label(), step.action.kind());
            }
            if let Ok(table) = stm32boot::device::DeviceTable::builtin() {
                let _ = job.check_option_names(table);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
