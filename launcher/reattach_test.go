package launcher

const daemonEnv = "_LAUNCHER_TEST_DAEMON"

func runTestDaemon() int { return 0 }
