job "hello-service" {
  name        = "hello-service"
  type        = "service"
  datacenters = ["dc1"]

  group "web" {
    count = 1

    restart {
      attempts = 2
      interval = "1m"
      delay    = "1s"
      mode     = "delay"
    }

    ephemeral_disk {
      size    = 100
      sticky  = true
      migrate = true
    }

    task "server" {
      driver = "raw_exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "while true; do echo \"serving $NOMAD_ALLOC_ID\"; sleep 1; done"]
      }

      env = {
        PORT = 8080
      }

      kill_timeout = "2s"
      kill_signal  = "SIGTERM"

      resources {
        cpu    = 100
        memory = 64
      }

      logs {
        max_files     = 3
        max_file_size = 1
        disabled      = false
      }
    }

    task "cache" {
      driver = "mock_driver"

      config {
        run_for       = "1h"
        stdout_string = "cache warm\n"
      }

      restart {
        attempts = 0
      }
    }
  }
}
