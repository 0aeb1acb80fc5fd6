//! Built for wasm32-wasip2 this is a `wasi:cli/command` component: a real component that does
//! not target the `lanes:provider` world. The tests use it to check that the host rejects it.

fn main() {
    println!("I am a command, not a provider");
}
