use super::*;

#[test]
fn kinds_index_their_programs() {
    for (i, kind) in ThreadKind::ALL.into_iter().enumerate() {
        assert_eq!(kind as usize, i, "{}", kind.name());
    }
}

#[test]
fn every_filter_compiles() {
    for kind in ThreadKind::ALL {
        let prog = compile(kind).unwrap();
        assert!(!prog.is_empty(), "{}", kind.name());
    }
}

#[test]
fn vcpu_filter_is_narrower_than_the_main_filter() {
    let main = filters::rules(ThreadKind::Main).unwrap();
    let vcpu = filters::rules(ThreadKind::Vcpu).unwrap();
    for call in vcpu.keys() {
        assert!(
            main.contains_key(call),
            "vcpu allows syscall {call} that main does not"
        );
    }
    assert!(!vcpu.contains_key(&libc::SYS_openat));
    assert!(!vcpu.contains_key(&libc::SYS_socket));
    assert!(!vcpu.contains_key(&libc::SYS_clone3));
}

/// A filtered thread that makes a call outside its filter kills the process: run in a
/// child process so the test binary survives.
#[test]
fn a_call_outside_the_filter_kills_with_sigsys() {
    // SAFETY: the child only installs a filter and makes raw system calls before exiting.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let prog = compile(ThreadKind::Encoder).unwrap_or_default();
        if seccompiler::apply_filter(&prog).is_err() {
            // SAFETY: exits the child without running any destructor.
            unsafe { libc::_exit(2) };
        }
        // SAFETY: openat with a null path only fails; the filter should kill first.
        unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, std::ptr::null::<u8>(), 0) };
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFSIGNALED(status), "status {status}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
}

/// Runs `f` in a forked child and returns its wait status.
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `f` and exits without returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = f();
        // SAFETY: exits the child without running the harness's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    status
}

/// Under the API filter threads still start (`clone3` answers ENOSYS, the C library falls
/// back to `clone` with `CLONE_THREAD`), but a new process cannot.
#[test]
fn api_threads_start_threads_but_not_processes() {
    let status = in_child(|| {
        ENABLED.store(true, Ordering::SeqCst);
        if install(ThreadKind::Api).is_err() {
            return 2;
        }
        match std::thread::spawn(|| 7).join() {
            Ok(7) => {}
            _ => return 3,
        }
        // SAFETY: a raw clone3 with a null argument: ENOSYS from the filter before the
        // kernel reads anything.
        let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
        if r != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
            return 4;
        }
        // SAFETY: fork in a single-purpose child; the filter should kill it first.
        unsafe { libc::fork() };
        5
    });
    assert!(libc::WIFSIGNALED(status), "status {status:#x}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
}

/// `tgkill` reaches this process's threads only: not another process.
#[test]
fn the_kick_signal_reaches_only_our_own_threads() {
    let status = in_child(|| {
        // Compiled here, in the child: the rule names the compiling process.
        let Ok(prog) = compile(ThreadKind::Vcpu) else {
            return 2;
        };
        if seccompiler::apply_filter(&prog).is_err() {
            return 2;
        }
        // SAFETY: tgkill with signal 0 only checks that the thread exists.
        let own = unsafe {
            libc::syscall(
                libc::SYS_tgkill,
                libc::getpid(),
                libc::syscall(libc::SYS_gettid),
                0,
            )
        };
        if own != 0 {
            return 3;
        }
        // SAFETY: as above, aimed at the parent test process: the filter kills first.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getppid(), libc::getppid(), 0) };
        4
    });
    assert!(libc::WIFSIGNALED(status), "status {status:#x}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
}

#[test]
#[ignore = "prints the allowed ioctl numbers, for comparing with strace -X verbose"]
fn print_ioctls() {
    for kind in ThreadKind::ALL {
        let io: Vec<String> = filters::ioctls(kind)
            .iter()
            .map(|n| format!("{n:#x}"))
            .collect();
        println!("IOCTLS {} {}", kind.name(), io.join(" "));
    }
}
