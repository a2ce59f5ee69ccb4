from recsmith.cli import main

main()
