//! The desktop chat app. Its window and chat flow come with the app's own work; until then this
//! binary reports the engine it is built against and points at the command-line chat.

fn main() {
    println!(
        "sovereign-app {}: the desktop window is not built yet; `sovereign chat` runs the same engine in a terminal",
        env!("CARGO_PKG_VERSION")
    );
}
