//! The desktop chat app's window.

use std::path::PathBuf;
use std::process::ExitCode;

use eframe::egui;
use sovereign_app::{AppOptions, ChatApp};

const USAGE: &str = "usage: sovereign-app [--model FILE.gguf] [--data-dir DIR]

  --model FILE    load this GGUF model at start (default: the last one used, else the
                  default model, fetched on first start)
  --data-dir DIR  where conversations and settings live (default: SOVEREIGN_APP_DATA, else
                  the platform's data directory)";

struct Window(ChatApp);

impl eframe::App for Window {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.0.show(ui);
    }

    fn on_exit(&mut self) {
        self.0.shutdown();
    }
}

fn parse_args() -> Result<(Option<PathBuf>, Option<PathBuf>), String> {
    let mut model = None;
    let mut data_dir = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        let mut value = |name: &str| {
            args.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--model" | "-m" => model = Some(value("--model")?),
            "--data-dir" => data_dir = Some(value("--data-dir")?),
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    Ok((model, data_dir))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,wgpu_hal::gles=off,sovereign=info")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let (model, data_dir) = match parse_args() {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let data_dir = match data_dir.map_or_else(sovereign_app::store::default_data_dir, Ok) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Sovereign")
            .with_app_id("sovereign")
            .with_inner_size([1180.0, 760.0])
            .with_min_inner_size([640.0, 420.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    let result = eframe::run_native(
        "Sovereign",
        options,
        Box::new(move |cc| {
            let app = ChatApp::new(
                &cc.egui_ctx,
                AppOptions {
                    data_dir,
                    model,
                    load_at_start: true,
                },
            )?;
            Ok(Box::new(Window(app)))
        }),
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
