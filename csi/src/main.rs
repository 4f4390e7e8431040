//! `sheepdog-csi`: not built yet; this binary only reports its version.
//! See the project's issues for when it arrives.

fn main() {
    println!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
}
