fn main() -> std::process::ExitCode {
    krops_deploy::main()
}
