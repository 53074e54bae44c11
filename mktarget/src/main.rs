fn main() -> std::process::ExitCode {
    mktarget::main()
}
