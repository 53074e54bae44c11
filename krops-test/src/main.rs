fn main() -> std::process::ExitCode {
    krops_test::main()
}
