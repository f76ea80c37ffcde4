fn main() {
    retina::allocator::tune_for_repeated_buffers();
    std::process::exit(retina::cli::main());
}
