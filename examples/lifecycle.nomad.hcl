# Task lifecycle: a prestart setup task, a prestart sidecar that lives as long as the
# main task, the main task, a poststart task and a poststop cleanup task.
job "lifecycle" {
  type = "batch"

  group "app" {
    task "setup" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo setting up > \"$NOMAD_ALLOC_DIR/data/setup.txt\""]
      }
      lifecycle {
        hook    = "prestart"
        sidecar = false
      }
    }

    task "proxy" {
      driver = "mock_driver"
      config {
        run_for       = "1h"
        stdout_string = "proxy ready\n"
      }
      lifecycle {
        hook    = "prestart"
        sidecar = true
      }
      kill_timeout = "1s"
    }

    task "main" {
      driver = "raw_exec"
      leader = true
      config {
        command = "/bin/sh"
        args    = ["-c", "cat \"$NOMAD_ALLOC_DIR/data/setup.txt\"; sleep 1; echo main done"]
      }
    }

    task "announce" {
      driver = "raw_exec"
      config {
        command = "/bin/echo"
        args    = ["main task started"]
      }
      lifecycle {
        hook = "poststart"
      }
    }

    task "cleanup" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "rm -f \"$NOMAD_ALLOC_DIR/data/setup.txt\"; echo cleaned up"]
      }
      lifecycle {
        hook = "poststop"
      }
    }
  }
}
