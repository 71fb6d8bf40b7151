//! The `novacron` umbrella binary (placeholder until the management plane lands).
fn main() {
    println!("{}", novacron_images::TESTGUEST_ELF);
}
