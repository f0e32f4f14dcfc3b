from srq.cli import main

main()
