//! Progress bars for long runs, only when a person is watching: when stdout is not a
//! terminal (a pipe, a CI log, the tests) the bars are hidden and the output is the
//! report alone.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    pub fn new() -> Progress {
        let multi = std::io::stdout()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()));
        Progress { multi }
    }

    /// A bar of `len` steps labelled `label`; hidden when not on a terminal.
    pub fn bar(&self, len: u64, label: &str, unit: &str) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let template = format!("   {{prefix:<12}} [{{bar:32}}] {{pos:>5}}/{{len}} {unit} {{msg}}");
        let style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = multi.add(ProgressBar::new(len));
        bar.set_style(style);
        bar.set_prefix(label.to_owned());
        bar
    }

    /// Clears every bar, so the report's next line starts on a clean line.
    pub fn done(&self, bars: &[&ProgressBar]) {
        for b in bars {
            b.finish_and_clear();
        }
        if let Some(multi) = &self.multi {
            for b in bars {
                multi.remove(b);
            }
            let _ = multi.clear();
        }
    }
}
