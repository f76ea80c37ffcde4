fn main() {
    std::process::exit(retina::cli::main());
}
