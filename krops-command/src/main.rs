fn main() -> std::process::ExitCode {
    krops_command::main()
}
