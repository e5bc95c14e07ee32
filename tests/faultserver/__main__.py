from tests.faultserver.cli import main

main()
