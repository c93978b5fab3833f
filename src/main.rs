//! crmsync command line.
fn main() {}
