fn main() -> std::process::ExitCode {
    populate::main()
}
