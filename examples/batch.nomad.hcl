# A batch job: two tasks that print and exit. Run with: allocrunner run examples/batch.nomad.hcl
job "hello-batch" {
  type        = "batch"
  datacenters = ["dc1"]

  meta {
    owner = "examples"
  }

  group "greet" {
    count = 1

    restart {
      attempts = 1
      delay    = "1s"
      mode     = "fail"
    }

    task "hello" {
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "echo hi from $NOMAD_TASK_NAME in $NOMAD_ALLOC_ID"]
      }

      env {
        GREETING = "hi"
      }

      kill_timeout = "2s"

      resources {
        cpu    = 100
        memory = 64
      }

      logs {
        max_files     = 2
        max_file_size = 1
      }
    }

    task "count" {
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "for i in 1 2 3; do echo \"tick $i\"; done"]
      }
    }
  }
}
